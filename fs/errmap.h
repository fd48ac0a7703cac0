/* errmap: the one place where fs/ turns a client error class (client/error.h)
 * into the errno a FUSE call returns. Every fs/ module that reports a
 * failed hc_, gcs_, http_ or auth_ call as an errno goes through here. */
#ifndef DICOMFS_ERRMAP_H
#define DICOMFS_ERRMAP_H

/* 0 for CERR_OK, else a negative errno: -ENOMEM, -EINVAL, -EACCES (refused
 * credentials, permission), -ENOENT, -EEXIST, -EAGAIN (a failed condition,
 * quota), -EIO for everything else (network, timeout, server failures,
 * malformed answers; also for a value that is no class). */
int errmap_errno(int cls);

/* The errno of an operation that finished with a google.rpc.Code. */
int errmap_rpc_errno(int code);

#endif
