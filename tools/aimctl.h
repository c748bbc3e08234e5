/*
 * aimctl.h — the subcommands that live outside aimctl.c, one file each.
 * Each takes the arguments after its name and returns the exit status
 * (0 success, 1 failure with the reason on stderr, 2 usage).
 */
#ifndef AIM_AIMCTL_H
#define AIM_AIMCTL_H

int cmd_status(int argc, char **argv);
int cmd_ship(int argc, char **argv);
int cmd_verify(int argc, char **argv);

#endif
