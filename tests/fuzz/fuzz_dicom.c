/* libFuzzer target for client/dicom.c: the same input through the memory
 * reader and the fd reader (a memfd), which must agree. */
#include "dicom.h"

#include <stdint.h>

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int same_info(const dicom_info *a, const dicom_info *b)
{
    return strcmp(a->transfer_syntax, b->transfer_syntax) == 0 &&
           strcmp(a->sop_class_uid, b->sop_class_uid) == 0 &&
           strcmp(a->sop_instance_uid, b->sop_instance_uid) == 0 &&
           strcmp(a->study_uid, b->study_uid) == 0 && strcmp(a->series_uid, b->series_uid) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dicom_info mem, fdi;
    char why_mem[256], why_fd[256];
    int rc_mem = dicom_parse(data, size, &mem, why_mem, sizeof why_mem);
    /* Invariants of a successful parse. */
    if (rc_mem == CERR_OK) {
        if (!mem.sop_instance_uid[0] || !mem.study_uid[0] || !mem.series_uid[0])
            abort();
        if (mem.meta_end < 132 || mem.meta_end > size)
            abort();
    } else if (!why_mem[0]) {
        abort(); /* every failure explains itself */
    }
    (void)dicom_check_magic(data, size);
    (void)dicom_strerror(rc_mem);

    int fd = memfd_create("fuzz_dicom", 0);
    if (fd < 0)
        return 0;
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    if (done == size) {
        int rc_fd = dicom_parse_fd(fd, &fdi, why_fd, sizeof why_fd);
        if (rc_fd != rc_mem)
            abort();
        if (rc_mem == CERR_OK && !same_info(&mem, &fdi))
            abort();
    }
    close(fd);
    return 0;
}
