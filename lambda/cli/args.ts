/** A small argv parser for the vmie commands: flags, flags with values, and positionals. */

/** A flag a command accepts. */
export interface FlagSpec {
  /** Whether the flag takes a value (`--region eu-west-1` or `--region=eu-west-1`). */
  readonly value?: boolean;
  /** What the value is, for the usage text (`region`). @default value */
  readonly valueName?: string;
  /** A one-letter alias (`-h`). */
  readonly short?: string;
  /** One line for the usage text. */
  readonly help: string;
}

/** What the parser found. */
export interface ParsedArgs {
  readonly flags: Readonly<Record<string, string | true>>;
  readonly positionals: readonly string[];
}

/** A mistake in the command line: the command prints it with the usage and exits 64. */
export class UsageError extends Error {
  public constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Parses `argv` against `specs`; throws {@link UsageError} on unknown flags or missing values. */
export function parseArgs(argv: readonly string[], specs: Readonly<Record<string, FlagSpec>>): ParsedArgs {
  const flags: Record<string, string | true> = {};
  const positionals: string[] = [];
  const byShort = new Map(Object.entries(specs).filter(([, s]) => s.short).map(([name, s]) => [s.short!, name]));
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (arg.startsWith('--') && arg.length > 2) {
      const eq = arg.indexOf('=');
      name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      inline = eq < 0 ? undefined : arg.slice(eq + 1);
      if (!specs[name]) throw new UsageError(`unknown option --${name}`);
    } else if (arg.startsWith('-') && arg.length === 2) {
      name = byShort.get(arg.slice(1));
      if (!name) throw new UsageError(`unknown option ${arg}`);
    } else if (arg.startsWith('-') && arg.length > 2 && !/^-\d/.test(arg)) {
      throw new UsageError(`unknown option ${arg}`);
    } else {
      positionals.push(arg);
      continue;
    }
    const spec = specs[name];
    if (spec.value) {
      const v = inline ?? argv[++i];
      if (v === undefined || (inline === undefined && v.startsWith('-'))) throw new UsageError(`option --${name} needs a value`);
      flags[name] = v;
    } else {
      if (inline !== undefined) throw new UsageError(`option --${name} takes no value`);
      flags[name] = true;
    }
  }
  return { flags, positionals };
}

/** The lines describing `specs` for a usage text. */
export function describeFlags(specs: Readonly<Record<string, FlagSpec>>): string[] {
  const rows = Object.entries(specs).map(([name, s]) => [`${s.short ? `-${s.short}, ` : '    '}--${name}${s.value ? ` <${s.valueName ?? 'value'}>` : ''}`, s.help]);
  const width = Math.max(0, ...rows.map(([left]) => left.length));
  return rows.map(([left, help]) => `  ${left.padEnd(width)}  ${help}`);
}
