/* fuseio: the daemon's reads and writes of /dev/fuse (installed with
 * libfuse's fuse_session_custom_io), to ask the kernel for parallel
 * directory operations.
 *
 * Without FUSE_PARALLEL_DIROPS the kernel runs a LOOKUP in a directory only
 * after a READDIR of that directory in flight (fuse_lock_inode): a `stat
 * DS/STORE` waits for an `ls DS` that waits on the server, up to timeout=,
 * although the last listing answers it at once. libfuse before 3.17.1 never
 * passes the flag to the kernel, whatever the filesystem wants (fixed
 * upstream by "Pass FUSE_PARALLEL_DIROPS to kernel"); Debian 12 ships 3.14.
 * So the INIT reply is amended here, when the kernel offered the flag.
 * Nothing in dicomfs relies on the kernel's serialization: libfuse locks
 * its node table and paths, and every dicomfs cache has its own lock.
 * Custom I/O turns libfuse's splice off; dicomfs never asked for it.
 * No FUSE headers: the unit test drives it through pipes. */
#ifndef DICOMFS_FUSEIO_H
#define DICOMFS_FUSEIO_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* As read(2), noting the INIT request and whether the kernel offers
 * parallel directory operations. userdata is unused. */
ssize_t fuseio_read(int fd, void *buf, size_t len, void *userdata);

/* As writev(2); the successful reply to that INIT asks for parallel
 * directory operations when the kernel offered them. */
ssize_t fuseio_writev(int fd, struct iovec *iov, int count, void *userdata);

#endif
