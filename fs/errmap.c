/* errmap: client error class -> errno (see errmap.h). */
#include "errmap.h"

#include <errno.h>

#include "error.h"

int errmap_errno(int cls)
{
    switch (cls) {
    case CERR_OK:
        return 0;
    case CERR_NOMEM:
        return -ENOMEM;
    case CERR_INVALID:
        return -EINVAL;
    case CERR_AUTH:
    case CERR_PERMISSION:
        return -EACCES;
    case CERR_NOT_FOUND:
        return -ENOENT;
    case CERR_EXISTS:
        return -EEXIST;
    case CERR_PRECONDITION:
    case CERR_QUOTA:
        return -EAGAIN;
    default: /* the server or the way to it failed: nothing the caller can fix */
        return -EIO;
    }
}

int errmap_rpc_errno(int code)
{
    return errmap_errno(cerr_from_rpc_code(code));
}
