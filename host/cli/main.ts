#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { DeepWasmError } from '../errors.js';
import { commandHelp, parseFlags } from './args.js';
import type { Command } from './commands/command.js';
import { benchCommand } from './commands/bench.js';
import { chatCommand } from './commands/chat.js';
import { convertCommand } from './commands/convert.js';
import { inspectCommand } from './commands/inspect.js';
import { logitsCommand } from './commands/logits.js';
import { runCommand } from './commands/run.js';
import { serveCommand } from './commands/serve.js';
import { synthCommand } from './commands/synth.js';
import { templateCommand } from './commands/template.js';
import { tokenizeCommand } from './commands/tokenize.js';
import { webCommand } from './commands/web.js';
import { osErrorMessage } from './files.js';

const COMMANDS: Command[] = [runCommand, chatCommand, tokenizeCommand, templateCommand, logitsCommand, synthCommand, inspectCommand, benchCommand, convertCommand, webCommand, serveCommand];

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'Usage: deepwasm <command> [flags]',
    '',
    'DeepSeek-V2/V3 inference on a WebAssembly SIMD core.',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Run "deepwasm <command> --help" for its flags, "deepwasm --version" for the version. Add --debug to any command for stack traces.',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage() + '\n');
    return name === undefined ? 1 : 0;
  }
  if (name === '--version') {
    process.stdout.write(packageVersion() + '\n');
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    process.stderr.write(`error: unknown command "${name}"\n\n${usage()}\n`);
    return 1;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(commandHelp(command.name, command.description ?? command.summary, command.flags) + '\n');
    return 0;
  }
  return (await command.run(parseFlags(rest.filter((a) => a !== '--debug'), command.flags, command.name))) ?? 0;
}

/** The version in package.json at the package root (this file runs from dist/host/cli). */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

const debug = process.argv.includes('--debug');
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    // A file the user named that cannot be read or written is theirs to fix, like a bad flag.
    const userMessage = e instanceof DeepWasmError ? e.message : osErrorMessage(e);
    if (debug) process.stderr.write(`${(e as Error)?.stack ?? String(e)}\n`);
    else if (userMessage !== undefined) process.stderr.write(`error: ${userMessage}\n`);
    else process.stderr.write(`internal error: ${(e as Error)?.message ?? String(e)} (run with --debug for details)\n`);
    process.exitCode = userMessage !== undefined ? 1 : 70;
  },
);
