import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import {
  BufferSink, convert, convertResumable, FileSink, PAUSE_ALIGN,
  type ConvertCheckpoint, type ConvertOptions, type ConvertTarget, type FileSinkState, type Sink,
} from '../../../lambda/disk/convert';
import { sealOf } from '../../../lambda/disk/convert/checkpoint';
import type { DiskImage, Extent } from '../../../lambda/disk/image';
import { openQcow2 } from '../../../lambda/disk/qcow2';
import { openRaw } from '../../../lambda/disk/raw';
import { BufferSource, FileSource, type ByteSource } from '../../../lambda/disk/source';
import { openVdi } from '../../../lambda/disk/vdi';
import { openVhd } from '../../../lambda/disk/vhd';
import { openVmdk } from '../../../lambda/disk/vmdk';
import { cached, pseudoRandom, qemuConvert, sampleGptDisk, sampleMbrDisk, tempDir, tool } from '../../helpers/fixtures';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const TARGETS: readonly ConvertTarget[] = ['vmdk', 'vhd', 'vhd-fixed', 'raw'];

/** Identities fixed so that two conversions of the same image write the same bytes. */
const FIXED: ConvertOptions = {
  vmdk: { cid: 0x1234abcd },
  vhd: { uniqueId: Buffer.from('00112233445566778899aabbccddeeff', 'hex'), timestamp: new Date('2024-05-01T00:00:00Z') },
};

/**
 * 13 MiB + 4 KiB of pseudo-random runs with holes between them: a run across a 2 MiB boundary, a
 * lone sector, a 2 MiB hole inside the data, and data up to the last byte of a size that is
 * neither whole MiB nor whole 2 MiB blocks.
 */
function holeyRandomDisk(): string {
  return cached('resume-holey-13M4K.raw', (file) => {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 13 * MiB + 4 * KiB);
    const fd = fs.openSync(file, 'r+');
    const runs: Array<[number, number]> = [
      [0, 64 * KiB],
      [MiB + MiB / 2, 2 * MiB - 4 * KiB],
      [6 * MiB + 512, 512],
      [8 * MiB - 64 * KiB, 192 * KiB],
      [12 * MiB - 8 * KiB, MiB + 12 * KiB],
    ];
    runs.forEach(([at, len], i) => fs.writeSync(fd, pseudoRandom(len, 100 + i), 0, len, at));
    fs.closeSync(fd);
  });
}

/** An input: an image file, its format for qemu-img, and our reader of it. */
interface Input {
  readonly label: string;
  readonly file: () => string;
  readonly format: string;
  readonly open: (s: ByteSource) => Promise<DiskImage>;
  /** Pause periods (runs per segment) to chain with; undefined: every one from 0 to the run count. */
  readonly periods?: (runs: number) => number[];
  /** Options of the first segment and of the uninterrupted reference conversion. */
  readonly options: ConvertOptions;
}

/** A sample of periods for the larger fixtures (every point is also visited by one chain). */
const sampled = (runs: number) => [0, 3, Math.floor(runs / 2)];

const INPUTS: Input[] = [
  {
    label: 'pseudo-random data with holes (raw)',
    file: holeyRandomDisk,
    format: 'raw',
    open: openRaw,
    options: { ...FIXED, vmdk: { ...FIXED.vmdk, level: 1 } },
  },
  {
    label: 'MBR sample disk as qcow2',
    file: () => qemuConvert(sampleMbrDisk(), 'qcow2'),
    format: 'qcow2',
    open: openQcow2,
    periods: sampled,
    // Level 1 keeps the 32 MiB of random data in this disk quick to deflate, many times over.
    options: { ...FIXED, vmdk: { ...FIXED.vmdk, level: 1 } },
  },
  {
    label: 'GPT sample disk as VDI',
    file: () => qemuConvert(sampleGptDisk(), 'vdi'),
    format: 'vdi',
    open: openVdi,
    periods: sampled,
    options: FIXED,
  },
];

/**
 * Output kept in memory, in order only, like an upload (neither seekable nor sparse). A sink that
 * continues a paused output starts with its parts, shared rather than copied, so that chaining
 * many segments costs no more than the output. Chunks are kept as given, not copied: a writer that
 * changed a buffer after writing it would show as a difference from the reference, which a
 * {@link BufferSink} (copying) takes.
 */
class MemorySink implements Sink {
  private readonly parts: Buffer[];
  private pos: number;
  private state: 'open' | 'closed' | 'aborted' = 'open';

  public constructor(written: readonly Buffer[] = []) {
    this.parts = [...written];
    this.pos = written.reduce((n, b) => n + b.length, 0);
  }

  public get position(): number {
    return this.pos;
  }

  /** Whether {@link close} completed. */
  public get closed(): boolean {
    return this.state === 'closed';
  }

  public async write(chunk: Buffer): Promise<void> {
    if (this.state !== 'open') throw new Error(`the sink is ${this.state}`);
    this.parts.push(chunk);
    this.pos += chunk.length;
  }

  public async close(): Promise<void> {
    if (this.state !== 'open') throw new Error(`the sink is ${this.state}`);
    this.state = 'closed';
  }

  public async abort(): Promise<void> {
    this.state = 'aborted';
  }

  /** The parts written so far, for a sink that continues them. */
  public written(): readonly Buffer[] {
    if (this.state !== 'open') throw new Error(`the sink is ${this.state}`);
    return [...this.parts];
  }

  public contents(): Buffer {
    if (this.state !== 'closed') throw new Error('the output is not complete');
    return Buffer.concat(this.parts);
  }
}

/** An image that records the offsets it is asked to read. */
function recording(img: DiskImage, reads: Array<[number, number]>): DiskImage {
  return {
    ...img,
    read: (offset: number, length: number) => {
      reads.push([offset, length]);
      return img.read(offset, length);
    },
    extents: () => img.extents(),
  };
}

async function withImage<T>(input: Input, fn: (img: DiskImage) => Promise<T>): Promise<T> {
  const src = await FileSource.open(input.file());
  try {
    return await fn(await input.open(src));
  } finally {
    await src.close();
  }
}

/**
 * The output of an uninterrupted conversion, the offsets of the runs it read (one poll of
 * shouldPause each), and the points it could pause at: for a run at o, the next multiple of
 * PAUSE_ALIGN, if a run starts there or above.
 */
async function reference(input: Input, target: ConvertTarget): Promise<{ output: Buffer; runs: number[]; points: number[] }> {
  const sink = new BufferSink();
  let runs = 0;
  const reads: Array<[number, number]> = [];
  const outcome = await withImage(input, (img) =>
    convertResumable(recording(img, reads), target, sink, { ...input.options, shouldPause: () => (runs++, false) }));
  expect(outcome.done).toBe(true);
  expect(reads.length).toBe(runs);
  const last = reads[reads.length - 1][0];
  const points = [...new Set(reads.map(([o]) => Math.ceil(o / PAUSE_ALIGN) * PAUSE_ALIGN).filter((p) => p <= last))];
  if (!input.periods) {
    // convert() is the same conversion without pauses
    const again = new BufferSink();
    await withImage(input, (img) => convert(img, target, again, input.options));
    expect(again.contents().equals(sink.contents())).toBe(true);
  }
  return { output: sink.contents(), runs: reads.map(([o]) => o), points };
}

/** `checkpoint` with its writer state changed by `change`, sealed again as if the converter had written it. */
function resealed(checkpoint: ConvertCheckpoint, change: Record<string, unknown>): ConvertCheckpoint {
  const altered = { ...checkpoint, writer: { ...(checkpoint.writer as object), ...change } };
  return { ...altered, writer: { ...altered.writer, seal: sealOf(altered) } };
}

/** A JSON round trip, as a checkpoint stored between two processes takes. */
function throughJson(checkpoint: ConvertCheckpoint): ConvertCheckpoint {
  const text = JSON.stringify(checkpoint);
  const back = JSON.parse(text) as ConvertCheckpoint;
  expect(back).toEqual(checkpoint); // nothing that JSON changes (a Buffer would)
  return back;
}

/**
 * Converts in segments, each in a fresh image and a fresh sink holding the bytes written so far,
 * segment k resuming at `from` asking to pause after `pauseAfter(k, from)` runs, and checks what
 * each segment read.
 */
async function chained(
  input: Input,
  target: ConvertTarget,
  pauseAfter: (segment: number, from: number) => number,
): Promise<{ output: Buffer; pauses: number[] }> {
  let written: readonly Buffer[] = [];
  let checkpoint: ConvertCheckpoint | undefined;
  const pauses: number[] = [];
  for (let segment = 0; segment < 500; segment++) {
    const sink = new MemorySink(written);
    const from = checkpoint?.resumeAt ?? 0;
    const n = pauseAfter(segment, from);
    let polls = 0;
    const reads: Array<[number, number]> = [];
    const outcome = await withImage(input, (img) =>
      convertResumable(recording(img, reads), target, sink, {
        ...(checkpoint ? { resume: checkpoint } : input.options),
        shouldPause: () => polls++ === n,
      }));
    // Resuming reads nothing below where it resumes
    expect(reads.filter(([o]) => o < from)).toEqual([]);
    if (outcome.done) return { output: sink.contents(), pauses };
    // A clean point: aligned, nothing read at or above it, all output handed to the sink
    const { resumeAt, outputPosition } = outcome.checkpoint;
    expect(resumeAt % PAUSE_ALIGN).toBe(0);
    expect(reads.filter(([o, l]) => o + l > resumeAt)).toEqual([]);
    expect(outcome.bytesDone).toBe(resumeAt);
    expect(outputPosition).toBe(sink.position);
    if (segment > 0) expect(resumeAt).toBeGreaterThan(from);
    pauses.push(resumeAt);
    written = sink.written();
    checkpoint = throughJson(outcome.checkpoint);
  }
  throw new Error('the conversion did not end');
}

function qemu(args: string[]): { status: number; out: string } {
  const r = spawnSync(tool('qemu-img'), args, { encoding: 'utf8' });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

/** `qemu-img compare` of the input image with an output (VHDs sized by their footer's current size). */
function qemuCompare(input: Input, output: string, target: ConvertTarget): { status: number; out: string } {
  if (target === 'vhd' || target === 'vhd-fixed') {
    return qemu([
      'compare', '-q', '--image-opts',
      `driver=${input.format},file.filename=${input.file()}`,
      `driver=vpc,force_size_calc=current_size,file.filename=${output}`,
    ]);
  }
  return qemu(['compare', '-f', input.format, '-F', target === 'vmdk' ? 'vmdk' : 'raw', input.file(), output]);
}

describe('a paused conversion resumed from its JSON checkpoint writes the bytes of an uninterrupted one', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('vmie-resume-');
  });
  afterAll(() => tmp.cleanup());

  for (const input of INPUTS) {
    for (const target of TARGETS) {
      test(`${input.label} to ${target}`, async () => {
        // GIVEN
        const { output: want, runs, points } = await reference(input, target);
        expect(runs.length).toBeGreaterThan(4);
        // WHEN: one chain that pauses at every point in turn: asked before the first run of a
        // segment when that gives a new point (always, the first time), else before the second
        const every = await chained(input, target, (segment, from) => (segment === 0 || runs.find((o) => o >= from)! > from ? 0 : 1));
        // THEN
        expect(every.output.equals(want)).toBe(true);
        expect(every.pauses).toEqual(points);
        const periods = input.periods ? input.periods(runs.length) : [...Array(runs.length + 1).keys()];
        const firstPauses = new Set<number>();
        for (const n of periods) {
          // WHEN: the first pause after n runs of a fresh conversion, then one every n runs
          const { output, pauses } = await chained(input, target, (segment) => (segment === 0 ? n : Math.max(1, n)));
          // THEN
          expect({ n, length: output.length, identical: output.equals(want) }).toEqual({ n, length: want.length, identical: true });
          expect(pauses.every((p) => points.includes(p))).toBe(true);
          if (pauses.length) firstPauses.add(pauses[0]);
        }
        // a fresh conversion paused at each point too (at a sample of them on the larger fixtures)
        if (!input.periods) expect([...firstPauses].sort((a, b) => a - b)).toEqual(points);
        // THEN: qemu-img reads the output as the input
        const out = path.join(tmp.dir, `${input.format}-${target}.out`);
        fs.writeFileSync(out, every.output);
        expect(qemuCompare(input, out, target).status).toBe(0);
        if (target === 'vmdk') expect(qemu(['check', '-f', 'vmdk', out])).toEqual({ status: 0, out: expect.stringContaining('No errors') });
      });
    }
  }
});

describe('a paused conversion on a local file continues in a reopened file', () => {
  for (const target of TARGETS) {
    test(`GPT sample disk as VDI to ${target}, suspended and resumed every 2 runs`, async () => {
      // GIVEN
      const { dir, cleanup } = tempDir('vmie-resume-file-');
      try {
        const input = INPUTS[2];
        // the same name in two directories: a VMDK's descriptor names its file
        fs.mkdirSync(path.join(dir, 'whole'));
        fs.mkdirSync(path.join(dir, 'paused'));
        const whole = path.join(dir, 'whole', 'disk.out');
        await withImage(input, async (img) => convert(img, target, await FileSink.create(whole), input.options));
        const out = path.join(dir, 'paused', 'disk.out');
        // WHEN
        let saved: FileSinkState | undefined;
        let checkpoint: ConvertCheckpoint | undefined;
        let segments = 0;
        for (;;) {
          segments++;
          const sink = saved ? await FileSink.resume(JSON.parse(JSON.stringify(saved))) : await FileSink.create(out);
          let polls = 0;
          const outcome = await withImage(input, (img) => convertResumable(img, target, sink, {
            ...(checkpoint ? { resume: checkpoint } : input.options),
            shouldPause: () => polls++ === 2,
          }));
          if (outcome.done) break;
          saved = await sink.suspend();
          expect(saved.position).toBe(outcome.checkpoint.outputPosition);
          checkpoint = throughJson(outcome.checkpoint);
          expect(fs.existsSync(out)).toBe(false);
        }
        // THEN
        expect(segments).toBeGreaterThan(3);
        expect(fs.readdirSync(path.dirname(out))).toEqual(['disk.out']);
        expect(fs.readFileSync(out).equals(fs.readFileSync(whole))).toBe(true);
        expect(qemuCompare(input, out, target).status).toBe(0);
        if (target === 'vmdk') expect(qemu(['check', '-f', 'vmdk', out]).status).toBe(0);
      } finally {
        cleanup();
      }
    });
  }
});

describe('checkpoints stay small and resuming costs what is left', () => {
  /** A sparse disk of `size` bytes with 64 KiB of data at each of `at`, counting what is read. */
  function sparseImage(size: number, at: number[]): { img: DiskImage; reads: Array<[number, number]> } {
    const data = new Map(at.map((o, i) => [o, pseudoRandom(64 * KiB, i + 1)]));
    const reads: Array<[number, number]> = [];
    const img: DiskImage = {
      format: 'raw',
      subformat: 'raw',
      virtualSize: size,
      findings: [],
      details: {},
      async read(offset: number, length: number) {
        reads.push([offset, length]);
        const out = Buffer.alloc(Math.max(0, Math.min(length, size - offset)));
        for (const [o, d] of data) {
          const s = Math.max(o, offset);
          const e = Math.min(o + d.length, offset + out.length);
          if (s < e) d.copy(out, s - offset, s - o, e - o);
        }
        return out;
      },
      async *extents(): AsyncIterable<Extent> {
        for (const o of at) yield { offset: o, length: 64 * KiB };
      },
    };
    return { img, reads };
  }

  for (const [target, size] of [['vmdk', 16 * TiB], ['vhd', 2040 * GiB]] as const) {
    test(`a ${size / GiB} GiB sparse disk to ${target} paused halfway: a checkpoint of a few KiB, and the same output`, async () => {
      // GIVEN: data at both ends and in the middle
      const at = [0, 5 * MiB, size / 2 - 64 * KiB, size / 2 + 64 * KiB, size - 64 * KiB];
      const whole = new BufferSink();
      await convert(sparseImage(size, at).img, target, whole, FIXED);
      // WHEN: asked to pause before the run just past the middle
      const first = sparseImage(size, at);
      const sink = new BufferSink();
      let polls = 0;
      const paused = await convertResumable(first.img, target, sink, { ...FIXED, shouldPause: () => polls++ === 3 });
      if (paused.done) throw new Error('the conversion did not pause');
      const text = JSON.stringify(paused.checkpoint);
      const second = sparseImage(size, at);
      const rest = new BufferSink(sink.snapshot());
      const resumed = await convertResumable(second.img, target, rest, { resume: JSON.parse(text) });
      // THEN
      expect(paused.checkpoint.resumeAt).toBe(size / 2 + 2 * MiB);
      expect(text.length).toBeLessThan(8 * KiB);
      expect(resumed.done).toBe(true);
      expect(second.reads).toEqual([[size - 64 * KiB, 64 * KiB]]);
      expect(rest.contents().equals(whole.contents())).toBe(true);
      const back = target === 'vmdk' ? await openVmdk(new BufferSource('out', rest.contents())) : await openVhd(new BufferSource('out', rest.contents()));
      expect((await back.read(size - 64 * KiB, 64 * KiB)).equals(pseudoRandom(64 * KiB, at.length))).toBe(true);
    });
  }
});

describe('a checkpoint that does not fit is refused and leaves the sink as it is', () => {
  const random = INPUTS[0];

  /** Pauses a conversion of `input` to `target` after `n` runs; returns the checkpoint and the bytes so far. */
  async function pausedAt(input: Input, target: ConvertTarget, n: number, sink: Sink = new BufferSink()) {
    let polls = 0;
    const outcome = await withImage(input, (img) => convertResumable(img, target, sink, { ...input.options, shouldPause: () => polls++ === n }));
    if (outcome.done) throw new Error('the conversion did not pause');
    return { checkpoint: throughJson(outcome.checkpoint), sink };
  }

  /** Resumes with `checkpoint` on a sink holding `bytes`; expects a RangeError matching `message` and the sink intact. */
  async function refused(input: Input, target: ConvertTarget, checkpoint: unknown, bytes: Buffer, message: RegExp, options: ConvertOptions = {}) {
    const sink = new BufferSink(bytes);
    const attempt = withImage(input, (img) => convertResumable(img, target, sink, { ...options, resume: checkpoint as ConvertCheckpoint }));
    await expect(attempt).rejects.toThrow(RangeError);
    await expect(attempt).rejects.toThrow(message);
    expect(sink.snapshot().equals(bytes)).toBe(true);
  }

  test('the version, target, disk size and sink position are checked', async () => {
    // GIVEN
    const { checkpoint, sink } = await pausedAt(random, 'vmdk', 6);
    const bytes = (sink as BufferSink).snapshot();
    // WHEN / THEN
    await refused(random, 'vmdk', { ...checkpoint, version: 2 }, bytes, /version 2/);
    await refused(random, 'vhd', checkpoint, bytes, /conversion to "vmdk", not to vhd/);
    await refused(INPUTS[1], 'vmdk', checkpoint, bytes, /disk of \d+ bytes; this image has/);
    await refused(random, 'vmdk', checkpoint, bytes.subarray(0, bytes.length - 512), /sink is at/);
    await refused(random, 'vmdk', { ...checkpoint, resumeAt: checkpoint.resumeAt + MiB }, bytes, /multiple of/);
  });

  test('a damaged or contradicted writer state is refused', async () => {
    // GIVEN
    const { checkpoint, sink } = await pausedAt(random, 'vmdk', 8);
    const bytes = (sink as BufferSink).snapshot();
    const writer = checkpoint.writer as Record<string, unknown>;
    // WHEN / THEN: damaged in storage
    await refused(random, 'vmdk', { ...checkpoint, writer: { ...writer, grains: (writer.grains as number) + 1 } }, bytes, /seal/);
    await refused(random, 'vmdk', { ...checkpoint, writer: null }, bytes, /not an object/);
    // WHEN / THEN: sealed again, so that the writer's own checks see them
    await refused(random, 'vmdk', resealed(checkpoint, { gd: 'z:AAAA' }), bytes, /grain directory/);
    await refused(random, 'vmdk', resealed(checkpoint, { gdEntries: 1e9 }), bytes, /directory entries/);
    await refused(random, 'vmdk', resealed(checkpoint, { written: (writer.written as number) - 512 }), bytes, /VMDK writer wrote/);
    await refused(random, 'vmdk', resealed(checkpoint, { kind: 'raw' }), bytes, /writer kind/);
    await refused(random, 'vmdk', resealed(checkpoint, { resumeAt: 0 }), bytes, /writer state was taken at 0/);
    await refused(random, 'vmdk', checkpoint, bytes, /compression level/, { vmdk: { level: 9 } });
    await refused(random, 'vmdk', checkpoint, bytes, /CID/, { vmdk: { cid: 7 } });
    // the same options given again are fine
    const again = new BufferSink(bytes);
    const outcome = await withImage(random, (img) => convertResumable(img, 'vmdk', again, { ...random.options, resume: checkpoint }));
    expect(outcome.done).toBe(true);
  });

  test('a dynamic VHD whose block table went out first needs the same extents, and a patched one a sink that can seek', async () => {
    // GIVEN: a table planned from one extent over the whole disk, paused past the hole at 4-6 MiB
    const planned = await pausedAt(random, 'vhd', 8);
    expect(planned.checkpoint.resumeAt).toBe(8 * MiB);
    const fewerExtents: Input = {
      ...random,
      open: async (s) => {
        const img = await openRaw(s);
        return {
          ...img,
          async *extents() {
            yield { offset: 0, length: 4 * MiB };
            yield { offset: 6 * MiB, length: img.virtualSize - 6 * MiB };
          },
        };
      },
    };
    // and a table patched in at the end, on a file
    const { dir, cleanup } = tempDir('vmie-resume-refused-');
    try {
      const fileSink = await FileSink.create(path.join(dir, 'out.vhd'));
      const patched = await pausedAt(random, 'vhd', 8, fileSink);
      const state = await fileSink.suspend();
      // WHEN / THEN
      await refused(fewerExtents, 'vhd', planned.checkpoint, (planned.sink as BufferSink).snapshot(), /extents no longer give the block table/);
      await refused(random, 'vhd', patched.checkpoint, fs.readFileSync(state.tempPath), /sink that can seek/);
      await refused(random, 'vhd', resealed(patched.checkpoint, { blocks: 1 }), Buffer.alloc(state.position), /cannot hold/);
      const resumed = await FileSink.resume(state);
      const done = await withImage(random, (img) => convertResumable(img, 'vhd', resumed, { resume: patched.checkpoint }));
      expect(done.done).toBe(true);
      expect(fs.readdirSync(dir)).toEqual(['out.vhd']);
    } finally {
      cleanup();
    }
  });
});

describe('mutated checkpoints give a RangeError that leaves the sink untouched, or the output of an uninterrupted conversion', () => {
  const input = INPUTS[0];
  /** A sample of values to put in a field: anything, the old number moved a little, the old string with a character changed, nothing. */
  const changes = fc.oneof(
    fc.anything().map((v) => ({ set: v as unknown })),
    fc.tuple(fc.integer({ min: -3, max: 3 }), fc.constantFrom(1, 512, 64 * KiB, 2 * MiB)).map(([d, unit]) => ({ add: d * unit })),
    fc.tuple(fc.nat(), fc.constantFrom(...'AZaz09+/=:bz')).map(([at, ch]) => ({ at, ch })),
    fc.constant({ remove: true }),
  );

  for (const target of TARGETS) {
    test(`resuming a conversion to ${target}`, async () => {
      // GIVEN: a conversion paused at its last point, 12 MiB, with a run of data left
      const disk = fs.readFileSync(input.file());
      const open = () => openRaw(new BufferSource('holey.raw', disk));
      const sink = new MemorySink();
      let polls = 0;
      const outcome = await convertResumable(await open(), target, sink, { ...input.options, shouldPause: () => polls++ === 12 });
      if (outcome.done) throw new Error('the conversion did not pause');
      expect(outcome.checkpoint.resumeAt).toBe(12 * MiB);
      const checkpoint = throughJson(outcome.checkpoint);
      const parts = sink.written();
      const whole = new BufferSink();
      await convert(await open(), target, whole, input.options);
      const want = whole.contents();
      const fields = [
        ...Object.keys(checkpoint).filter((k) => k !== 'writer').map((k) => [k]),
        ['writer'],
        ...Object.keys(checkpoint.writer as object).map((k) => ['writer', k]),
      ];
      await fc.assert(
        fc.asyncProperty(fc.constantFrom(...fields), changes, fc.boolean(), async (where, change, reseal) => {
          // WHEN
          const mutated = JSON.parse(JSON.stringify(checkpoint));
          const holder = where.length === 1 ? mutated : mutated.writer;
          const key = where[where.length - 1];
          const old = holder[key];
          if ('set' in change) holder[key] = change.set;
          else if ('add' in change) holder[key] = typeof old === 'number' ? old + change.add : change.add;
          else if ('at' in change) holder[key] = typeof old === 'string' && old.length ? old.slice(0, change.at % old.length) + change.ch + old.slice(change.at % old.length + 1) : change.ch;
          else delete holder[key];
          // sealed again, the change reaches the writer's own checks (as a forged checkpoint would)
          const resume = reseal && where.length === 2 && typeof mutated.writer === 'object' && mutated.writer
            ? { ...mutated, writer: { ...mutated.writer, seal: sealOf(mutated) } }
            : mutated;
          const reads: Array<[number, number]> = [];
          const resumed = new MemorySink(parts);
          let error: unknown;
          try {
            await convertResumable(recording(await open(), reads), target, resumed, { resume });
          } catch (e) {
            error = e;
          }
          // THEN
          expect(reads.every(([o]) => o >= checkpoint.resumeAt)).toBe(true);
          if (error === undefined) {
            expect(resumed.closed).toBe(true);
            // unless sealed again, only a change that changed nothing gets through
            if (resume === mutated) expect(resumed.contents().equals(want)).toBe(true);
          } else {
            expect(error).toBeInstanceOf(RangeError);
            expect(String((error as Error).message)).toMatch(/^checkpoint: /);
            const after = resumed.written(); // throws once aborted or closed
            expect(after.length === parts.length && after.every((b, i) => b === parts[i])).toBe(true);
          }
        }),
        { numRuns: 150 },
      );
    });
  }
});
