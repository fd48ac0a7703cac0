/* wait: the `dicomfs wait PATH` sub-command. Polls the status file of the
 * store that PATH (a mounted store directory or anything below it) belongs
 * to, draws a progress bar on a terminal (plain lines otherwise), and exits
 * 0 when everything pending was imported, 1 with the failures listed when
 * any file failed, 2 on usage errors or when PATH is not in a dicomfs mount.
 */
#ifndef DICOMFS_WAIT_H
#define DICOMFS_WAIT_H

int wait_main(int argc, char **argv);

#endif
