/**
 * vmie: the disk-image engine of the VM Import/Export constructs as a command, to check and
 * convert an image on one's own machine before uploading it.
 *
 *   vmie inspect <file | s3://bucket/key> [--json]
 *   vmie convert <input file> <output file> [--to vmdk|vhd|vhd-fixed|raw]
 *   vmie import <s3://bucket/key> [--follow]
 *   vmie export <ami-id | i-id> [--format vmdk|vhd|raw|ova] [--follow]
 *
 * Each subcommand is an entry of {@link COMMANDS}; the rest of this file is dispatch, help and
 * exit codes.
 */
import { describeFlags, parseArgs, UsageError } from './args';
import { EXIT, type CliIo, type Command } from './command';
import { convertCommand } from './convert';
import { inspectCommand } from './inspect';
import { exportCommand, importCommand } from './workflow';
import { version } from '../../package.json';

/** The subcommands, by name. */
export const COMMANDS: Readonly<Record<string, Command>> = {
  [inspectCommand.name]: inspectCommand,
  [convertCommand.name]: convertCommand,
  [importCommand.name]: importCommand,
  [exportCommand.name]: exportCommand,
};

const PROGRAM = 'vmie';
const HELP_FLAG = { help: { short: 'h', help: 'show this help' } } as const;

/** The usage text of the program, or of one command. */
export function usage(command?: Command): string {
  if (command) {
    return [
      `Usage: ${PROGRAM} ${command.synopsis}`,
      '',
      command.summary + '.',
      ...(command.description.length ? ['', ...command.description] : []),
      '',
      'Options:',
      ...describeFlags({ ...command.flags, ...HELP_FLAG }),
      '',
    ].join('\n');
  }
  const names = Object.values(COMMANDS);
  const width = Math.max(...names.map((c) => c.name.length));
  return [
    `Usage: ${PROGRAM} <command> [options]`,
    '',
    'Checks, converts, imports and exports VM disk images for AWS VM Import/Export.',
    '',
    'Commands:',
    ...names.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Options:',
    '  -h, --help     show this help (also: vmie <command> --help)',
    '      --version  print the version',
    '',
  ].join('\n');
}

/** Runs vmie with `argv` (without the node and script paths); returns the exit code. */
export async function main(argv: readonly string[], io: CliIo): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    io.stderr(usage());
    return EXIT.USAGE;
  }
  if (first === '--help' || first === '-h' || first === 'help') {
    const topic = first === 'help' ? rest[0] : undefined;
    if (topic !== undefined && !COMMANDS[topic]) return usageError(io, `unknown command '${topic}'`);
    io.stdout(usage(topic !== undefined ? COMMANDS[topic] : undefined));
    return EXIT.OK;
  }
  if (first === '--version') {
    io.stdout(`${PROGRAM} ${version}\n`);
    return EXIT.OK;
  }
  if (first.startsWith('-')) return usageError(io, `unknown option ${first}`);
  const command = COMMANDS[first];
  if (!command) return usageError(io, `unknown command '${first}'`);
  try {
    const args = parseArgs(rest, { ...command.flags, ...HELP_FLAG });
    if (args.flags.help) {
      io.stdout(usage(command));
      return EXIT.OK;
    }
    return await command.run(args, io);
  } catch (e) {
    if (e instanceof UsageError) return usageError(io, e.message, command);
    const err = e as Error;
    io.stderr(`${PROGRAM}: ${err.name && err.name !== 'Error' ? `${err.name}: ` : ''}${err.message}\n`);
    if (io.env.VMIE_DEBUG) io.stderr(`${err.stack}\n`);
    return EXIT.SOFTWARE;
  }
}

function usageError(io: CliIo, message: string, command?: Command): number {
  io.stderr(`${PROGRAM}: ${message}\n\n${usage(command)}`);
  return EXIT.USAGE;
}

if (require.main === module) {
  const io: CliIo = {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    env: process.env,
  };
  main(process.argv.slice(2), io).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`${PROGRAM}: ${(e as Error).stack ?? e}\n`);
      process.exitCode = EXIT.SOFTWARE;
    },
  );
}
