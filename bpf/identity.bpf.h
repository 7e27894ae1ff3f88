/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The one way every identity program names an executable: from the struct
 * file, never from a path or from what stat() would say (see struct
 * wk_exe_key in wirekey.h).
 */
#ifndef WIREKEY_IDENTITY_BPF_H
#define WIREKEY_IDENTITY_BPF_H

#include "wirekey.h"

static __always_inline void wk_exe_key_of(struct file *file, struct wk_exe_key *key)
{
	struct inode *inode = file->f_inode;

	key->ino = inode->i_ino;
	key->dev = inode->i_sb->s_dev;
	key->inode = (__u64)inode;
}

#endif /* WIREKEY_IDENTITY_BPF_H */
