/**
 * An executable as the kernel knows it (struct wk_exe_key): the address of
 * its struct inode, which is what makes it unique, with the inode's number
 * and superblock device for people to read. Never derived from stat().
 */
export interface ExeKey {
  ino: bigint;
  /** The superblock's kernel dev_t: (major << 20) | minor. */
  dev: number;
  /** The struct inode's kernel address. */
  inode: bigint;
}
