#!/bin/sh
# check-ext4.sh IMAGE — is the ext4 file system in IMAGE a state a crash may
# leave?  For aimctl check:
#
#   aimctl check --base BASE --fsck 'scripts/check-ext4.sh {}' SEGMENTS...
#
# At a barrier of a mounted ext4 the metadata of the last transactions is in
# its journal, not yet in place, and `e2fsck -fn IMAGE` (which must not write,
# so cannot replay the journal) may report that as damage.  So this checks a
# copy the way the next mount would see it: the journal replayed
# (`e2fsck -E journal_only`), then a full read-only check (`e2fsck -fn`) that
# must find nothing.  IMAGE itself is only read.  Exit 0 when clean, else
# e2fsck's status (4: errors left, 8: it could not check).
set -u
img=$1
tmp=$(mktemp "${TMPDIR:-/var/tmp}/check-ext4.XXXXXX") || exit 8
trap 'rm -f "$tmp"' EXIT
cp --reflink=auto --sparse=always "$img" "$tmp" || exit 8
# 0: nothing to replay, 1: replayed; anything else is a problem e2fsck -fn names
e2fsck -E journal_only -p "$tmp" >/dev/null 2>&1
e2fsck -fn "$tmp"
