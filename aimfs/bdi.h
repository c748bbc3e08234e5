/*
 * bdi.h — the kernel's writeback limits of aimfs's own mount.
 *
 * The kernel gives every FUSE mount a "strict" dirty-page limit (a share
 * of 1 % of the dirty threshold, enforced even when the system is far
 * below its own limits), because an unprivileged FUSE server must not be
 * able to pin the machine's memory in dirty pages.  aimfs is the host's
 * own root daemon; under cache=writeback that limit throttled a
 * sustained buffered writer to one FUSE round trip per page.  Linux 6.2
 * made it a knob: /sys/class/bdi/MAJ:MIN/strict_limit.
 */
#ifndef AIM_BDI_H
#define AIM_BDI_H

/* Turns the strict limit off for the FUSE mount at mountpoint (found in
 * /proc/self/mountinfo: no request is sent to the mount itself, whose
 * loop may not run yet); the system-wide dirty limits (vm.dirty_ratio,
 * vm.dirty_bytes) still apply.  0, or -errno (a kernel without the knob
 * gives -ENOENT). */
int bdi_lift_strict_limit(const char *mountpoint);

#endif
