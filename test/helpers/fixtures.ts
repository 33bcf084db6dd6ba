/**
 * Test fixtures made by real tools: qemu-img (qemu-utils), sfdisk (fdisk) and mke2fs (e2fsprogs).
 * Images are built on first use into test/fixtures/.cache and reused; the name of each fixture
 * spells out everything it is built from, so a changed recipe gets a new name.
 *
 * A test that needs a tool fails loudly when the tool is missing: the tools are part of the test
 * environment (`.ci/run` installs them), never optional.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const CACHE_DIR = path.join(__dirname, '..', 'fixtures', '.cache');
const MiB = 1024 * 1024;

const TOOL_PACKAGES: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'sfdisk': 'fdisk',
  'mke2fs': 'e2fsprogs',
  'debugfs': 'e2fsprogs',
  'e2fsck': 'e2fsprogs',
  'mkfs.vfat': 'dosfstools',
  'mkfs.xfs': 'xfsprogs',
  'mkfs.btrfs': 'btrfs-progs',
  'mkfs.ntfs': 'ntfs-3g',
  'mkswap': 'util-linux',
  'xz': 'xz-utils',
  'zstd': 'zstd',
  'bzip2': 'bzip2',
  'gzip': 'gzip',
};

const found = new Map<string, string>();

/** The path of a tool, or a loud error naming the package that provides it. */
export function tool(name: string): string {
  const hit = found.get(name);
  if (hit) return hit;
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) {
      found.set(name, p);
      return p;
    }
  }
  const pkg = TOOL_PACKAGES[name] ?? name;
  throw new Error(`${name} is required by this test but is not installed: run 'apt-get install -y ${pkg}' (.ci/run does).`);
}

/** Runs a tool and returns its stdout. */
export function run(name: string, args: string[], input?: string): string {
  return execFileSync(tool(name), args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 64 * MiB });
}

/**
 * Returns the cached file `name`, building it with `build(tmpPath)` first if it is not there yet.
 * The build writes to a temporary path that is renamed into place, so a failed build leaves nothing.
 */
export function cached(name: string, build: (file: string) => void): string {
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const file = path.join(CACHE_DIR, name);
  if (fs.existsSync(file)) return file;
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    build(tmp);
    fs.renameSync(tmp, file);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return file;
}

/** A fresh temporary directory, removed by the returned function. */
export function tempDir(prefix = 'vmie-test-'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic pseudo-random bytes (xorshift), so fixtures are the same on every machine. */
export function pseudoRandom(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.writeUInt32LE(x, i <= length - 4 ? i : 0);
  }
  return out;
}

/** A partition of a fixture disk. */
export interface PartitionSpec {
  /** Size in MiB; the last partition may omit it to take the rest. */
  readonly sizeMiB?: number;
  /** sfdisk type: an MBR hex id (`83`, `ef`, `7`) or a GPT type GUID or alias (`linux`, `uefi`, `bios`). */
  readonly type: string;
  /** MBR active flag. */
  readonly bootable?: boolean;
  /** Filesystem to make inside: only ext2/3/4 and fat (mkfs.vfat) are made here. */
  readonly fs?: 'ext2' | 'ext3' | 'ext4' | 'vfat';
  /** Fill the partition with pseudo-random bytes from this seed instead (no filesystem). */
  readonly randomSeed?: number;
}

/** A disk layout for {@link rawDisk}. */
export interface DiskSpec {
  readonly sizeMiB: number;
  readonly table: 'mbr' | 'gpt' | 'none';
  readonly partitions?: readonly PartitionSpec[];
  /** Write pseudo-random runs at these MiB offsets (64 KiB each) to scatter allocated data. */
  readonly scatter?: readonly number[];
}

function specKey(spec: unknown): string {
  return createHash('sha256').update(JSON.stringify(spec)).digest('hex').slice(0, 12);
}

/**
 * A raw disk image with a real partition table (sfdisk) and real filesystems (mke2fs, mkfs.vfat),
 * cached by its spec. The file is sparse where nothing was written.
 */
export function rawDisk(spec: DiskSpec): string {
  return cached(`disk-${spec.table}-${spec.sizeMiB}M-${specKey(spec)}.raw`, (file) => {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, spec.sizeMiB * MiB);
    const parts = spec.partitions ?? [];
    if (spec.table !== 'none' && parts.length > 0) {
      const lines = [`label: ${spec.table === 'mbr' ? 'dos' : 'gpt'}`, 'unit: sectors', ''];
      for (const p of parts) {
        const fields = [];
        if (p.sizeMiB) fields.push(`size=${p.sizeMiB}MiB`);
        fields.push(`type=${p.type}`);
        if (p.bootable) fields.push('bootable');
        lines.push(fields.join(', '));
      }
      run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', file], lines.join('\n') + '\n');
    }
    const layout = parts.length && spec.table !== 'none' ? partitionsOf(file) : [];
    parts.forEach((p, i) => {
      const where = spec.table === 'none' ? { start: 0, size: spec.sizeMiB * MiB } : layout[i];
      if (p.fs === 'vfat') {
        // mkfs.vfat has no offset option: build the filesystem alone and copy it in.
        const part = `${file}.p${i}`;
        fs.writeFileSync(part, '');
        fs.truncateSync(part, where.size);
        run('mkfs.vfat', ['-F', '32', part]);
        copyInto(part, file, where.start);
        fs.rmSync(part);
      } else if (p.fs) {
        run('mke2fs', ['-q', '-F', '-t', p.fs, '-E', `offset=${where.start}`, file, `${Math.floor(where.size / 1024)}k`]);
      } else if (p.randomSeed !== undefined) {
        const fd = fs.openSync(file, 'r+');
        for (let off = 0; off < where.size; off += MiB) {
          fs.writeSync(fd, pseudoRandom(Math.min(MiB, where.size - off), p.randomSeed + off / MiB), 0, undefined, where.start + off);
        }
        fs.closeSync(fd);
      }
    });
    if (spec.scatter?.length) {
      const fd = fs.openSync(file, 'r+');
      for (const mib of spec.scatter) fs.writeSync(fd, pseudoRandom(64 * 1024, mib + 7), 0, undefined, mib * MiB);
      fs.closeSync(fd);
    }
  });
}

/** The partitions of a disk image as sfdisk reads them (byte offsets). */
export function partitionsOf(file: string): Array<{ start: number; size: number; type: string }> {
  const json = JSON.parse(run('sfdisk', ['--json', file]));
  return json.partitiontable.partitions.map((p: { start: number; size: number; type: string }) => ({
    start: p.start * 512,
    size: p.size * 512,
    type: p.type,
  }));
}

function copyInto(from: string, to: string, offset: number): void {
  const data = fs.readFileSync(from);
  const fd = fs.openSync(to, 'r+');
  fs.writeSync(fd, data, 0, data.length, offset);
  fs.closeSync(fd);
}

/**
 * `qemu-img convert` of `input` into format `fmt` with `-o` options, cached under a name built
 * from the input's name, the format and the options.
 */
export function qemuConvert(input: string, fmt: string, options: string[] = [], ext = fmt): string {
  const tag = options.length ? `-${specKey(options)}` : '';
  return cached(`${path.basename(input)}.${fmt}${tag}.${ext}`, (file) => {
    const args = ['convert', '-q', '-f', 'raw', '-O', fmt];
    if (options.length) args.push('-o', options.join(','));
    run('qemu-img', [...args, input, file]);
  });
}

/** `qemu-img create` of an empty image, cached. */
export function qemuCreate(fmt: string, size: string, options: string[] = [], ext = fmt): string {
  const tag = options.length ? `-${specKey(options)}` : '';
  return cached(`empty-${size}.${fmt}${tag}.${ext}`, (file) => {
    const args = ['create', '-q', '-f', fmt];
    if (options.length) args.push('-o', options.join(','));
    run('qemu-img', [...args, file, size]);
  });
}

/** What `qemu-img info` says of an image. */
export function qemuInfo(file: string): { 'format': string; 'virtual-size': number; [k: string]: unknown } {
  return JSON.parse(run('qemu-img', ['info', '--output=json', file]));
}

/** The virtual bytes of any image qemu can read, as `qemu-img convert -O raw` gives them. */
export function qemuRaw(file: string, fmt?: string): string {
  const st = fs.statSync(file);
  return cached(`${path.basename(file)}.${specKey(`${st.size}:${st.mtimeMs}:${fmt ?? 'probe'}`)}.as-raw`, (out) => {
    const args = ['convert', '-q'];
    if (fmt) args.push('-f', fmt);
    run('qemu-img', [...args, '-O', 'raw', file, out]);
  });
}

/** A default bootable Linux-like MBR disk: an active ext4 partition and a partition of random data. */
export function sampleMbrDisk(sizeMiB = 64): string {
  return rawDisk({
    sizeMiB,
    table: 'mbr',
    partitions: [
      { sizeMiB: Math.floor(sizeMiB / 2), type: '83', bootable: true, fs: 'ext4' },
      { type: '83', randomSeed: 11 },
    ],
    // Inside the ext4 partition but past its superblock and group descriptors, so the probes still
    // see a filesystem while the readers meet data in an otherwise sparse region.
    scatter: [20],
  });
}

/** A default UEFI GPT disk: an ESP (FAT32), and a Linux root (ext4). */
export function sampleGptDisk(sizeMiB = 96): string {
  return rawDisk({
    sizeMiB,
    table: 'gpt',
    partitions: [
      { sizeMiB: 40, type: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B', fs: 'vfat' },
      { type: '0FC63DAF-8483-4772-8E79-3D69D8477DE4', fs: 'ext4' },
    ],
    scatter: [50, 70],
  });
}

/**
 * An empty qcow2 of `size` encrypted with LUKS (secret `abc`), cached. qemu-img times its key
 * derivation by the CPU time it gets; on a busy machine that measurement can fail ("Unable to get
 * accurate CPU usage"), which is retried a few times before failing loudly.
 */
export function qemuLuksQcow2(size = '16M'): string {
  return cached(`empty-${size}-luks.qcow2`, (file) => {
    const args = ['create', '-q', '-f', 'qcow2', '--object', 'secret,id=sec0,data=abc', '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=250', file, size];
    for (let attempt = 1; ; attempt++) {
      try {
        run('qemu-img', args);
        return;
      } catch (e) {
        if (attempt >= 5 || !/Unable to get accurate CPU usage/.test(String((e as { stderr?: string }).stderr ?? (e as Error).message))) throw e;
      }
    }
  });
}
