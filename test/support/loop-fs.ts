/**
 * File systems made for a test from loop devices and tmpfs: btrfs (with
 * subvolumes and snapshots), ext4, and overlays of them. Everything made is
 * undone by cleanup(), in reverse order, whatever failed on the way.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';

/** Why btrfs file systems cannot be made here, or undefined. */
export function btrfsSkipReason(): string | undefined {
  if (!/\tbtrfs$/m.test(readFileSync('/proc/filesystems', 'utf8'))) return 'requires btrfs in the kernel (/proc/filesystems)';
  if (!hasCommand('mkfs.btrfs')) return 'requires mkfs.btrfs (btrfs-progs; scripts/setup installs it)';
  return undefined;
}

/** Why overlays cannot be mounted here, or undefined. */
export function overlaySkipReason(): string | undefined {
  return /\toverlay$/m.test(readFileSync('/proc/filesystems', 'utf8')) ? undefined : 'requires overlayfs in the kernel (/proc/filesystems)';
}

export class LoopFilesystems {
  readonly #dir: string;
  readonly #undo: (() => void)[] = [];

  /** Images and mount points live under `dir`, which cleanup() removes. */
  constructor(dir: string) {
    this.#dir = dir;
    mkdirSync(dir, { recursive: true });
  }

  /** A fresh btrfs on a loop device, mounted at `<dir>/<name>`. */
  btrfs(name: string, sizeMb = 256): string {
    return this.#loop(name, sizeMb, ['mkfs.btrfs', '-q', '-f'], 'btrfs');
  }

  /** A fresh ext4 on a loop device, mounted at `<dir>/<name>`. */
  ext4(name: string, sizeMb = 64): string {
    return this.#loop(name, sizeMb, ['mkfs.ext4', '-q', '-F'], 'ext4');
  }

  /** A tmpfs mounted at `<dir>/<name>`. */
  tmpfs(name: string): string {
    const mnt = this.#mountPoint(name);
    this.#mount(['-t', 'tmpfs', 'tmpfs', mnt], mnt);
    return mnt;
  }

  /** An overlay at `<dir>/<name>` of `lower` under `upper` (its work directory next to it, on the same file system). */
  overlay(name: string, lower: string, upper: string, options: string[] = []): string {
    const work = `${upper}.work`;
    mkdirSync(upper, { recursive: true });
    mkdirSync(work, { recursive: true });
    const mnt = this.#mountPoint(name);
    this.#mount(['-t', 'overlay', 'overlay', '-o', [`lowerdir=${lower}`, `upperdir=${upper}`, `workdir=${work}`, ...options].join(','), mnt], mnt);
    return mnt;
  }

  /** Undoes everything, newest first; reports every step that failed, after trying them all. */
  cleanup(): void {
    const failures: string[] = [];
    for (const step of this.#undo.splice(0).reverse()) {
      try {
        step();
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
    rmSync(this.#dir, { recursive: true, force: true });
    if (failures.length) throw new Error(`loop file systems: cleanup failed: ${failures.join('; ')}`);
  }

  #loop(name: string, sizeMb: number, mkfs: string[], type: string): string {
    const image = path.join(this.#dir, `${name}.img`);
    execFileSync('truncate', ['-s', `${sizeMb}M`, image]);
    const dev = execFileSync('losetup', ['--find', '--show', image], { encoding: 'utf8' }).trim();
    this.#undo.push(() => execFileSync('losetup', ['--detach', dev]));
    execFileSync(mkfs[0] as string, [...mkfs.slice(1), dev], { stdio: 'ignore' });
    const mnt = this.#mountPoint(name);
    this.#mount(['-t', type, dev, mnt], mnt);
    return mnt;
  }

  #mountPoint(name: string): string {
    const mnt = path.join(this.#dir, name);
    mkdirSync(mnt, { recursive: true });
    return mnt;
  }

  #mount(args: string[], mnt: string): void {
    execFileSync('mount', args);
    // Lazy: a process of a failed test may still run a binary from it.
    this.#undo.push(() => {
      if (existsSync(mnt)) execFileSync('umount', ['--lazy', mnt]);
    });
  }
}

function hasCommand(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
