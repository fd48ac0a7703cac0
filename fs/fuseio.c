/* fuseio: /dev/fuse reads and writes that ask for parallel directory
 * operations (see fuseio.h). */
#include "fuseio.h"

#include <linux/fuse.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "log.h"

/* The INIT request being answered (0: none), when the kernel offered
 * FUSE_PARALLEL_DIROPS in it. INIT comes first and alone on a connection. */
static _Atomic uint64_t init_unique;

ssize_t fuseio_read(int fd, void *buf, size_t len, void *userdata)
{
    (void)userdata;
    ssize_t n = read(fd, buf, len);
    if (n >= (ssize_t)(sizeof(struct fuse_in_header) + offsetof(struct fuse_init_in, flags) +
                       sizeof(uint32_t))) {
        const struct fuse_in_header *h = buf;
        const struct fuse_init_in *in = (const void *)(h + 1);
        if (h->opcode == FUSE_INIT && in->major == 7 && (in->flags & FUSE_PARALLEL_DIROPS))
            atomic_store(&init_unique, h->unique);
    }
    return n;
}

ssize_t fuseio_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    (void)userdata;
    uint64_t u = atomic_load(&init_unique);
    if (u && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header) &&
        iov[1].iov_len >= offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
        const struct fuse_out_header *h = iov[0].iov_base;
        struct fuse_init_out *out = iov[1].iov_base;
        if (h->unique == u && h->error == 0) {
            out->flags |= FUSE_PARALLEL_DIROPS;
            atomic_store(&init_unique, 0);
            log_info("asked the kernel for parallel lookups and listings (FUSE_PARALLEL_DIROPS)");
        }
    }
    return writev(fd, iov, count);
}
