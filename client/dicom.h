/* dicom: a bounded DICOM Part-10 header reader.
 *
 * Owns: checking the 128-byte preamble and "DICM", reading the file meta
 * group (transfer syntax, media storage SOP class/instance) and the Study,
 * Series and SOP Instance UIDs from the data set in implicit VR LE, explicit
 * VR LE, explicit VR BE and deflated explicit VR LE. Every length is checked
 * against the input: no input can make it read out of bounds or loop.
 */
#ifndef DICOMFS_DICOM_H
#define DICOMFS_DICOM_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define DICOM_UID_MAX 64

/* Every function returns CERR_OK or a class (error.h): CERR_WRONG_TYPE
 * (too short for a preamble or no "DICM" at 128), CERR_TRUNCATED (an element
 * runs past the end of the input), CERR_MALFORMED (bad meta group, bad VR,
 * bad length), CERR_UNSUPPORTED (a transfer syntax whose data set cannot be
 * read), CERR_MISSING (a required UID is absent), CERR_IO. */

typedef struct dicom_info {
    char transfer_syntax[DICOM_UID_MAX + 1];    /* (0002,0010) */
    char media_sop_class[DICOM_UID_MAX + 1];    /* (0002,0002) */
    char media_sop_instance[DICOM_UID_MAX + 1]; /* (0002,0003) */
    char sop_class_uid[DICOM_UID_MAX + 1];      /* (0008,0016) */
    char sop_instance_uid[DICOM_UID_MAX + 1];   /* (0008,0018) */
    char study_uid[DICOM_UID_MAX + 1];          /* (0020,000D) */
    char series_uid[DICOM_UID_MAX + 1];         /* (0020,000E) */
    uint64_t meta_end;                          /* offset of the first data set byte */
} dicom_info;

/* Parses a whole file held in memory. On error, why (if non-NULL) gets a
 * message naming the offset and the problem. */
int dicom_parse(const uint8_t *buf, size_t len, dicom_info *out, char *why, size_t whylen);

/* Same for a file descriptor (reads with pread, skips large values without
 * reading them). */
int dicom_parse_fd(int fd, dicom_info *out, char *why, size_t whylen);

/* Quick check: at least 132 bytes with "DICM" at offset 128. */
int dicom_check_magic(const uint8_t *buf, size_t len);

const char *dicom_strerror(int rc);

#endif
