import * as fs from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fail } from '../errors.js';

/**
 * An OS error on a path (a file the user named that is missing or not theirs, a full disk) as one line, or undefined
 * for any other error: such errors are the user's to fix, not the program's.
 */
export function osErrorMessage(e: unknown): string | undefined {
  const err = e as NodeJS.ErrnoException;
  if (!(e instanceof Error) || typeof err.code !== 'string' || typeof err.path !== 'string') return undefined;
  return `cannot ${err.syscall ?? 'use'} ${err.path}: ${reason(err)}`;
}

/** "no such file or directory (ENOENT)" from Node's "ENOENT: no such file or directory, open '/x'". */
function reason(err: NodeJS.ErrnoException): string {
  const text = /^\w+: ([^,]+)/.exec(err.message)?.[1];
  return text === undefined ? String(err.code) : `${text} (${err.code})`;
}

const kindOf = (path: string): 'missing' | 'folder' | 'file' => {
  const stat = fs.statSync(path, { throwIfNoEntry: false });
  return stat === undefined ? 'missing' : stat.isDirectory() ? 'folder' : 'file';
};

/** Fails before any work is done when the file `flag` names cannot be written: its folder is missing, it is a folder, or it is not writable. */
export function checkOutputFile(path: string, flag: string): void {
  const where = `${flag} ${path}`;
  const folder = dirname(resolve(path));
  const folderKind = kindOf(folder);
  if (folderKind === 'missing') fail(`${where}: folder ${folder} does not exist`);
  if (folderKind === 'file') fail(`${where}: ${folder} is a file, not a folder`);
  const kind = kindOf(path);
  if (kind === 'folder') fail(`${where} is a folder: give the name of the file to write`);
  try {
    fs.accessSync(kind === 'file' ? path : folder, fs.constants.W_OK);
  } catch (e) {
    fail(`${where}: cannot write there (${reason(e as NodeJS.ErrnoException)})`);
  }
}

/** The bytes of the file `flag` names; a missing, unreadable or folder path is a one-line error naming the flag. */
export function readInputFile(path: string, flag: string): Uint8Array {
  const where = `${flag} ${path}`;
  const kind = kindOf(path);
  if (kind === 'missing') fail(`${where} does not exist`);
  if (kind === 'folder') fail(`${where} is a folder: give a file`);
  try {
    return fs.readFileSync(path);
  } catch (e) {
    return fail(`${where}: cannot read (${reason(e as NodeJS.ErrnoException)})`);
  }
}
