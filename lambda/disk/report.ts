/**
 * The inspection report as text for people: what the input is, the verdict, the partitions, the
 * findings grouped by severity with their remedies, and what the inspection cost.
 */
import { formatBytes } from './bytes';
import type { Finding, Severity } from './findings';
import type { DiskReport, InspectionReport } from './inspect';
import type { PartitionInfo } from './probe';

const GROUPS: ReadonlyArray<{ severity: Severity; title: string }> = [
  { severity: 'error', title: 'Errors (VM Import would reject the image)' },
  { severity: 'convertible', title: 'Fixed by conversion' },
  { severity: 'warning', title: 'Warnings (VM Import may reject the image)' },
  { severity: 'info', title: 'Notes' },
];

/** The verdict in a few words. */
export function verdict(report: InspectionReport): string {
  if (report.importable) return `importable as it is (ImportImage Format ${report.importFormat ?? '?'})`;
  if (report.needsConversion) return 'importable after conversion to a stream-optimized VMDK (`vmie convert`, or let the workflow do it)';
  const errors = report.findings.filter((f) => f.severity === 'error').length;
  return `NOT importable (${errors} error${errors === 1 ? '' : 's'})`;
}

/** Renders `report` as readable multi-line text. */
export function renderReport(report: InspectionReport): string {
  const out: string[] = [];
  out.push(`${report.name}: ${describeInput(report)}`);
  out.push(`Verdict: ${verdict(report)}`);
  if (report.ovf) {
    const o = report.ovf;
    const facts = [
      o.firmware ? `firmware ${o.firmware}` : undefined,
      o.osType ?? o.osDescription ? `OS ${o.osType ?? o.osDescription}` : undefined,
      o.cpus !== undefined ? `${o.cpus} CPU${o.cpus === 1 ? '' : 's'}` : undefined,
      o.memoryMiB !== undefined ? `${formatBytes(o.memoryMiB * 1024 * 1024)} memory` : undefined,
      `${o.networkAdapters} network adapter${o.networkAdapters === 1 ? '' : 's'}`,
    ].filter((x) => x);
    out.push(`OVF: ${facts.join(', ')}`);
  }

  if (report.disks.length > 1) {
    out.push('', `Disks (${report.disks.length}, the first is the boot disk):`);
    out.push(...table(
      ['#', 'name', 'format', 'size', 'table', 'boot'],
      report.disks.map((d) => [String(d.index), d.name, describeDisk(d), d.virtualSize !== undefined ? formatBytes(d.virtualSize) : '?', d.partitionTable?.toUpperCase() ?? '-', d.bootMode ?? '-']),
    ).map((l) => `  ${l}`));
  }

  for (const disk of report.disks) {
    if (disk.partitionTable === undefined) continue;
    if (disk.index > 0 && report.disks.length > 1 && disk.partitions.length === 0 && disk.partitionTable === 'none') continue;
    const which = report.disks.length > 1 ? ` of disk ${disk.index} (${disk.name})` : '';
    const boot = disk.bootMode ? `, boots with ${disk.bootMode}` : '';
    const root = disk.root ? `, root on partition ${disk.root.partition} (${disk.root.filesystem})` : '';
    if (disk.partitionTable === 'none') {
      out.push('', `Partitions${which}: no partition table${disk.wholeDiskFilesystem ? ` (the whole disk is ${disk.wholeDiskFilesystem})` : ''}`);
      continue;
    }
    out.push('', `Partitions${which}: ${disk.partitionTable.toUpperCase()}${boot}${root}`);
    if (disk.partitions.length === 0) {
      out.push('  (none)');
      continue;
    }
    out.push(...partitionTable(disk.partitions).map((l) => `  ${l}`));
  }

  for (const group of GROUPS) {
    const list = report.findings.filter((f) => f.severity === group.severity);
    if (list.length === 0) continue;
    out.push('', `${group.title}:`);
    for (const f of list) out.push(...renderFinding(f, report.disks.length > 1));
  }
  if (report.findings.length === 0) out.push('', 'No findings.');

  out.push('', `Read ${formatBytes(report.bytesRead)} of ${formatBytes(report.size)} in ${report.requests} request${report.requests === 1 ? '' : 's'}, ${report.durationMs} ms.`);
  return out.join('\n') + '\n';
}

function describeInput(r: InspectionReport): string {
  const size = r.virtualSize !== undefined ? `, ${formatBytes(r.virtualSize)} virtual` : '';
  const file = `${formatBytes(r.size)} ${r.disks.length > 1 && r.format !== 'ova' ? 'in all' : 'file'}`;
  switch (r.format) {
    case 'ova':
      return `OVA package with ${r.disks.length} disk${r.disks.length === 1 ? '' : 's'}${r.subformat ? ` (${r.subformat.toUpperCase()})` : ''}${size}, ${file}`;
    case 'gzip':
    case 'xz':
    case 'zstd':
    case 'bzip2':
      return `${r.format}-compressed ${r.subformat ? r.subformat.toUpperCase() : 'data'}${size}, ${file}`;
    case 'not-a-disk':
    case 'unknown':
      return `not a disk image, ${file}`;
    default:
      return `${r.format.toUpperCase()}${r.subformat && r.subformat !== r.format ? ` (${r.subformat})` : ''}${size}, ${file}`;
  }
}

function describeDisk(d: DiskReport): string {
  const fmt = d.format === 'unknown' ? '?' : d.format.toUpperCase();
  const sub = d.subformat && d.subformat !== d.format ? ` ${d.subformat}` : '';
  return `${d.compression ? `${d.compression} ` : ''}${fmt}${sub}`;
}

function partitionTable(parts: readonly PartitionInfo[]): string[] {
  return table(
    ['#', 'start', 'size', 'type', 'boot', 'filesystem', 'label'],
    parts.map((p) => [
      String(p.index),
      formatBytes(p.start),
      formatBytes(p.size),
      p.scheme === 'mbr' ? `${p.typeName} (${p.type})` : p.typeName,
      p.bootable ? '*' : '',
      p.filesystem ?? '-',
      p.label ?? p.name ?? '',
    ]),
  );
}

function renderFinding(f: Finding, multi: boolean): string[] {
  const disk = multi && f.disk !== undefined ? ` (disk ${f.disk})` : '';
  return [`  - [${f.code}]${disk} ${f.message}`, `    Fix: ${f.remedy}`];
}

/** Left-aligned columns separated by two spaces, trailing blanks trimmed. */
function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}
