/*
 * targets.h — what the remote already holds: the size of every target
 * (regular files under --target-dir, and the --map devices), sent with the
 * first mismatches answer of a resync.  A source whose remote holds no
 * target at all has nothing to compare: it ships data at once instead of
 * hashing it first (docs/RESYNC.md).
 */
#ifndef AIM_REMOTE_TARGETS_H
#define AIM_REMOTE_TARGETS_H

#include <jansson.h>
#include <stddef.h>

struct apply_map;

/* Caps the walk, so that a huge target directory answers in bounded time. */
#define TARGETS_MAX 100000

/*
 * {"image name": size in bytes, ...}: the regular files under target_dir
 * (names relative to it, symlinks not followed, at most TARGETS_MAX) and
 * each map "IMAGE=PATH" whose PATH opens (its size, a block device's too).
 * Returns NULL only when out of memory.
 */
json_t *targets_list(const char *target_dir, const struct apply_map *maps, size_t nmaps);

#endif
