import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BufferSink } from '../../lambda/disk/convert';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../../lambda/disk/errors';
import {
  compressedCopy, concatenated, EXT, KINDS, MiB, patchedCopy, runPipeline, sampleDisk, sliceOf, type PipelineOutcome,
} from '../helpers/convert-inputs';
import { cached, pseudoRandom, qemuConvert, qemuLuksQcow2, run, tempDir } from '../helpers/fixtures';
import { tarBuffer } from '../helpers/ova-builder';
import { fixVhdSum, utf16be } from '../helpers/vhd-family';
import { vmwareStreamVmdk } from '../helpers/vmdk-builder';

const OFFSET_MASK = 0x00fffffffffffe00n;

/** The qemu-made images of the sample disk, by format. */
const IMAGES: Record<string, () => string> = {
  'dynamic VHD': () => qemuConvert(sampleDisk(), 'vpc', ['subformat=dynamic'], 'vhd'),
  'VHDX': () => qemuConvert(sampleDisk(), 'vhdx'),
  'VDI': () => qemuConvert(sampleDisk(), 'vdi'),
  'monolithicSparse VMDK': () => qemuConvert(sampleDisk(), 'vmdk', ['subformat=monolithicSparse']),
  'streamOptimized VMDK (qemu-img layout)': () => qemuConvert(sampleDisk(), 'vmdk', ['subformat=streamOptimized']),
  'streamOptimized VMDK (VMware layout)': () => vmwareStreamVmdk(sampleDisk()),
  'qcow2': () => qemuConvert(sampleDisk(), 'qcow2'),
  'compressed qcow2 (qemu-img -c)': () => qcow2Compressed(),
};

function qcow2Compressed(): string {
  return cached(`${path.basename(sampleDisk())}.c.qcow2`, (f) => run('qemu-img', ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', sampleDisk(), f]));
}

/** qemu-img -c of a 4 MiB disk of a repeated 4 KiB pattern: every cluster compressed, none aligned. */
function qcow2OfPattern(): string {
  const raw = cached('convert-bad-input-pattern-4M.raw', (f) => {
    const cluster = Buffer.concat(Array(16).fill(pseudoRandom(4096, 9)));
    fs.writeFileSync(f, Buffer.concat(Array(64).fill(cluster)));
  });
  return cached('convert-bad-input-pattern-4M.c.qcow2', (f) => run('qemu-img', ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', raw, f]));
}

/** The L2 entries of the first L2 table of a qcow2 image: where each is, and its value. */
function qcow2L2Entries(d: Buffer): Array<{ at: number; entry: bigint }> {
  const l1 = Number(d.readBigUInt64BE(40));
  const l2 = Number(d.readBigUInt64BE(l1) & OFFSET_MASK);
  const clusterSize = 2 ** d.readUInt32BE(20);
  return [...Array(clusterSize / 8).keys()].map((j) => ({ at: l2 + 8 * j, entry: d.readBigUInt64BE(l2 + 8 * j) }));
}

/** A sector well past the end of the file `d`. */
const sectorsPastEnd = (d: Buffer): number => Math.ceil(d.length / 512) + 2048;

type Expectation = {
  /** The error class. */
  readonly type: typeof ImageReadError | typeof ImageFormatError | typeof UnsupportedImageError;
  /** Its code. */
  readonly code?: string;
  /** What the message must say. */
  readonly message: RegExp;
  /** Where the pipeline fails: opening the input, or converting it (once the sink exists). */
  readonly stage: 'open' | 'convert';
};

/** One bad input: how to make it (in `dir`) and how it must fail. */
type Case = [string, (dir: string) => string, Expectation];

const TRUNCATED: Omit<Expectation, 'stage'> = { type: ImageReadError, code: 'TRUNCATED', message: /truncated|ends before/i };

const CASES: Case[] = [
  // --- truncated: qemu-made files cut in the middle (VMDK readers check the last grain at open) ---
  ...Object.entries(IMAGES).map(([label, make]): Case => [
    `${label} cut in the middle`,
    (dir) => patchedCopy(make(), dir, 'cut.img', (d) => d.subarray(0, Math.floor(d.length / 2) + 1000)),
    { ...TRUNCATED, stage: label.includes('VMDK') ? 'open' : 'convert' },
  ]),
  [
    'qcow2 cut at a cluster boundary (a cluster then points past the end, as a damaged L2 entry would)',
    (dir) => patchedCopy(IMAGES.qcow2(), dir, 'cut.qcow2', (d) => d.subarray(0, Math.floor(d.length / 2 / 65536) * 65536)),
    { type: ImageFormatError, message: /past the end of the file \(\d+ bytes\): the file is truncated or its L2 table is damaged/, stage: 'convert' },
  ],
  [
    'compressed qcow2 cut inside a compressed cluster',
    (dir) => patchedCopy(qcow2OfPattern(), dir, 'cut.qcow2', (d) => d.subarray(0, Math.floor(d.length / 2) + 1000)),
    { ...TRUNCATED, message: /compressed cluster at virtual offset \d+ .* runs past the end of the file .* the file is truncated/, stage: 'convert' },
  ],
  ...Object.entries(IMAGES).map(([label, make]): Case => [
    `${label} cut inside its header`,
    (dir) => patchedCopy(make(), dir, 'stub.img', (d) => d.subarray(0, 300)),
    { ...TRUNCATED, stage: 'open' },
  ]),
  ...KINDS.map((kind): Case => [
    `${kind}-compressed raw disk cut in the middle`,
    (dir) => patchedCopy(compressedCopy(sampleDisk(), kind), dir, `cut.raw.${EXT[kind]}`, (d) => d.subarray(0, Math.floor(d.length / 2))),
    // The size in a zstd header lets the conversion start; the others find the end while counting.
    { ...TRUNCATED, stage: kind === 'zstd' ? 'convert' : 'open' },
  ]),
  [
    'gzip-compressed qcow2 cut in the middle (spooled)',
    (dir) => patchedCopy(compressedCopy(IMAGES.qcow2(), 'gzip'), dir, 'cut.qcow2.gz', (d) => d.subarray(0, Math.floor(d.length / 2))),
    { ...TRUNCATED, stage: 'open' },
  ],
  // --- corrupt compressed data ---
  ...KINDS.map((kind): Case => [
    `${kind}-compressed raw disk with a damaged byte in the middle of the stream`,
    (dir) => patchedCopy(compressedCopy(sampleDisk(), kind), dir, `bad.raw.${EXT[kind]}`, (d) => {
      d[Math.floor(d.length / 2)] ^= 0x55;
    }),
    {
      type: ImageFormatError,
      code: 'CORRUPT_STREAM',
      message: new RegExp(`${kind} stream is corrupt`),
      stage: kind === 'xz' || kind === 'zstd' ? 'convert' : 'open',
    },
  ]),
  [
    'streamOptimized VMDK with a corrupt compressed grain',
    (dir) => patchedCopy(IMAGES['streamOptimized VMDK (qemu-img layout)'](), dir, 'grain.vmdk', (d) => {
      // qemu-img writes the first grain (LBA 0) at the sector the header's overHead names.
      const first = Number(d.readBigUInt64LE(64)) * 512;
      const size = d.readUInt32LE(first + 8);
      for (let i = 0; i < 8; i++) d[first + 12 + Math.floor(size / 2) + i] ^= 0xff;
    }),
    { type: ImageFormatError, code: 'CORRUPT_GRAIN', message: /compressed grain of LBA 0 .* is corrupt/, stage: 'convert' },
  ],
  [
    'qcow2 with a corrupt compressed cluster',
    (dir) => patchedCopy(qcow2Compressed(), dir, 'cluster.qcow2', (d) => {
      const victim = qcow2L2Entries(d).find(({ entry }) => (entry & (1n << 62n)) !== 0n)!;
      const host = Number(victim.entry & ((1n << 54n) - 1n)); // cluster_bits 16: 54 bits of offset
      d.fill(0xff, host, host + 16); // no deflate block starts with the reserved block type
    }),
    { type: ImageFormatError, code: 'CORRUPT_CLUSTER', message: /compressed cluster at virtual offset \d+ .* is corrupt/, stage: 'convert' },
  ],
  // --- a table entry pointing past the end of the file ---
  [
    'dynamic VHD whose BAT points a block past the end',
    (dir) => patchedCopy(IMAGES['dynamic VHD'](), dir, 'bat.vhd', (d) => {
      const header = Number(d.readBigUInt64BE(16));
      const bat = Number(d.readBigUInt64BE(header + 16));
      let i = 0;
      while (d.readUInt32BE(bat + 4 * i) === 0xffffffff) i++;
      d.writeUInt32BE(sectorsPastEnd(d), bat + 4 * i);
    }),
    { type: ImageFormatError, message: /BAT points block \d+ at offset \d+, past the end of the file/, stage: 'convert' },
  ],
  [
    'qcow2 whose L2 table points a cluster past the end',
    (dir) => patchedCopy(IMAGES.qcow2(), dir, 'l2.qcow2', (d) => {
      const victim = qcow2L2Entries(d).find(({ entry }) => (entry & OFFSET_MASK) !== 0n)!;
      d.writeBigUInt64BE((victim.entry & ~OFFSET_MASK) | BigInt(Math.ceil(d.length / 65536 + 16) * 65536), victim.at);
    }),
    { type: ImageFormatError, message: /cluster at virtual offset \d+ points at \d+, past the end of the file/, stage: 'convert' },
  ],
  [
    'VDI whose block map points a block past the end',
    (dir) => patchedCopy(IMAGES.VDI(), dir, 'map.vdi', (d) => {
      const map = d.readUInt32LE(340);
      const allocated = d.readUInt32LE(388);
      expect(allocated + 2).toBeLessThan(d.readUInt32LE(384));
      let i = 0;
      while (d.readUInt32LE(map + 4 * i) >= 0xfffffffe) i++;
      d.writeUInt32LE(allocated + 2, map + 4 * i);
    }),
    { type: ImageFormatError, message: /block map points block \d+ at data block \d+, past the end of the file/, stage: 'convert' },
  ],
  [
    'monolithicSparse VMDK whose grain table points a grain past the end',
    (dir) => patchedCopy(IMAGES['monolithicSparse VMDK'](), dir, 'gt.vmdk', (d) => {
      const gt = d.readUInt32LE(Number(d.readBigUInt64LE(56)) * 512) * 512;
      let i = 0;
      while (d.readUInt32LE(gt + 4 * i) === 0) i++;
      d.writeUInt32LE(sectorsPastEnd(d), gt + 4 * i);
    }),
    { type: ImageReadError, message: /grain table points LBA \d+ at sector \d+, past the end of the file/, stage: 'convert' },
  ],
  // --- a parent that cannot be resolved ---
  [
    'qcow2 with a backing file',
    (dir) => {
      const file = path.join(dir, 'overlay.qcow2');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', '/nonexistent/base.qcow2', '-F', 'qcow2', file, '24M']);
      return file;
    },
    { type: UnsupportedImageError, code: 'DIFFERENCING_DISK', message: /backing file "\/nonexistent\/base.qcow2".*cannot be resolved/, stage: 'open' },
  ],
  [
    'gzip-compressed qcow2 with a backing file (spooled)',
    (dir) => {
      const file = path.join(dir, 'overlay.qcow2');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', '/nonexistent/base.qcow2', '-F', 'qcow2', file, '24M']);
      run('gzip', [file]);
      return `${file}.gz`;
    },
    { type: UnsupportedImageError, code: 'DIFFERENCING_DISK', message: /backing file.*cannot be resolved/, stage: 'open' },
  ],
  [
    'differencing VHD',
    (dir) => patchedCopy(IMAGES['dynamic VHD'](), dir, 'diff.vhd', (d) => {
      for (const at of [0, d.length - 512]) {
        d.writeUInt32BE(4, at + 60);
        fixVhdSum(d.subarray(at, at + 512), 64);
      }
      const header = Number(d.readBigUInt64BE(16));
      const h = d.subarray(header, header + 1024);
      utf16be('C:\\vms\\parent.vhd').copy(h, 64);
      fixVhdSum(h, 36);
    }),
    { type: UnsupportedImageError, code: 'DIFFERENCING_DISK', message: /parent is "C:\\vms\\parent.vhd".*cannot be resolved/, stage: 'open' },
  ],
  [
    'differencing VDI',
    (dir) => patchedCopy(IMAGES.VDI(), dir, 'diff.vdi', (d) => {
      d.writeUInt32LE(4, 76);
    }),
    { type: UnsupportedImageError, code: 'DIFFERENCING_DISK', message: /differencing image of the parent.*cannot be resolved/, stage: 'open' },
  ],
  [
    'VMDK delta disk whose parent is gone',
    () => cached('convert-bad-input-delta.vmdk', (f) => {
      const base = `${f}.base.vmdk`;
      try {
        run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '24M']);
        run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', base, '-F', 'vmdk', f]);
      } finally {
        fs.rmSync(base, { force: true });
      }
    }),
    { type: UnsupportedImageError, code: 'DIFFERENCING_DISK', message: /delta disk.*cannot be resolved/, stage: 'open' },
  ],
  // --- encryption ---
  [
    'encrypted qcow2 (LUKS)',
    () => qemuLuksQcow2(),
    { type: UnsupportedImageError, code: 'QCOW2_ENCRYPTED', message: /encrypted qcow2 image \(LUKS\)/, stage: 'open' },
  ],
  // --- compressed inputs that hold no convertible disk ---
  [
    'zstd file of two frames (the header declares only the first)',
    () => {
      const size = fs.statSync(sampleDisk()).size;
      return concatenated([compressedCopy(sliceOf(sampleDisk(), 0, size / 2), 'zstd'), compressedCopy(sliceOf(sampleDisk(), size / 2, size), 'zstd')], 'zst');
    },
    { type: ImageFormatError, code: 'SIZE_MISMATCH', message: /continues past the \d+ bytes.*several frames/, stage: 'convert' },
  ],
  [
    'xz inside gzip',
    () => compressedCopy(compressedCopy(sampleDisk(), 'xz'), 'gzip'),
    { type: UnsupportedImageError, message: /holds a xz stream inside its gzip stream/, stage: 'open' },
  ],
  [
    'gzip-compressed OVA',
    (dir) => {
      const file = path.join(dir, 'vm.ova');
      fs.writeFileSync(file, tarBuffer([{ name: 'vm.ovf', data: Buffer.from('<Envelope/>') }, { name: 'disk1.vmdk', data: Buffer.alloc(MiB, 1) }]));
      run('gzip', [file]);
      return `${file}.gz`;
    },
    { type: UnsupportedImageError, message: /gzip-compressed OVA package/, stage: 'open' },
  ],
  [
    'gzip-compressed PDF',
    (dir) => {
      const file = path.join(dir, 'manual.pdf');
      fs.writeFileSync(file, Buffer.concat([Buffer.from('%PDF-1.7\n'), Buffer.alloc(MiB, 0x20)]));
      run('gzip', [file]);
      return `${file}.gz`;
    },
    { type: UnsupportedImageError, code: 'NOT_A_DISK', message: /holds a PDF document \(gzip-compressed\), not a disk image/, stage: 'open' },
  ],
];

describe('conversion of bad input: a typed error naming the problem, and no output left behind', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('vmie-convert-bad-');
  });
  afterAll(() => tmp.cleanup());

  describe.each(['file', 'buffer'] as const)('into a %s sink', (sinkKind) => {
    test.each(CASES)('%s', async (_label, make, expected) => {
      // GIVEN
      const work = fs.mkdtempSync(path.join(tmp.dir, 'case-'));
      const input = make(work);
      const outDir = fs.mkdtempSync(path.join(tmp.dir, 'out-'));
      const spool = fs.mkdtempSync(path.join(tmp.dir, 'spool-'));
      // WHEN
      const outcome: PipelineOutcome = await runPipeline(input, sinkKind === 'file' ? 'vmdk' : 'raw', sinkKind, outDir, { tempDir: spool });
      // THEN
      expect(outcome.error).toBeInstanceOf(expected.type);
      if (expected.code) expect(outcome.error).toMatchObject({ code: expected.code });
      expect((outcome.error as Error).message).toMatch(expected.message);
      expect(outcome.stage).toBe(expected.stage);
      expect(fs.readdirSync(outDir)).toEqual([]);
      expect(fs.readdirSync(spool)).toEqual([]);
      if (sinkKind === 'buffer' && outcome.sink) {
        const sink = outcome.sink as BufferSink;
        expect(sink.closed).toBe(false);
        expect(() => sink.contents()).toThrow(/not complete/);
      }
    });
  });
});
