/* Tests for client/dicom.c against files written at test time by pydicom and
 * dcmtk (tests/unit/data/make_dicom.sh), which also writes the expected
 * result of every file into index.tsv. */
#include "dicom.h"
#include "testlib.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILES 2048

typedef struct expect {
    char name[128];
    int rc;
    char inst[80], study[80], series[80], cls[80], ts[80];
} expect;

static char dir[256];
static expect files[MAX_FILES];
static int n_files;

static int code_of(const char *s)
{
    static const struct {
        const char *name;
        int rc;
    } codes[] = {{"OK", CERR_OK},
                 {"NOT_PART10", CERR_WRONG_TYPE},
                 {"TRUNCATED", CERR_TRUNCATED},
                 {"MALFORMED", CERR_MALFORMED},
                 {"UNSUPPORTED", CERR_UNSUPPORTED},
                 {"MISSING", CERR_MISSING}};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(s, codes[i].name) == 0)
            return codes[i].rc;
    return 999;
}

static int load_index(void)
{
    char path[400];
    snprintf(path, sizeof path, "%s/index.tsv", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[1024], rc[32];
    while (n_files < MAX_FILES && fgets(line, sizeof line, f)) {
        expect *e = &files[n_files];
        if (sscanf(line, "%127[^\t]\t%31[^\t]\t%79[^\t]\t%79[^\t]\t%79[^\t]\t%79[^\t]\t%79[^\t\n]",
                   e->name, rc, e->inst, e->study, e->series, e->cls, e->ts) != 7)
            continue;
        e->rc = code_of(rc);
        n_files++;
    }
    fclose(f);
    return 0;
}

static const expect *find(const char *name)
{
    for (int i = 0; i < n_files; i++)
        if (strcmp(files[i].name, name) == 0)
            return &files[i];
    return NULL;
}

/* Result of both readers on one file. */
typedef struct result {
    int rc_mem, rc_fd;
    dicom_info mem, fd;
    char why_mem[256], why_fd[256];
} result;

static int parse_both(const char *name, result *r)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    struct stat st;
    fstat(fd, &st);
    const uint8_t *buf = NULL;
    void *map = MAP_FAILED;
    if (st.st_size > 0) {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map != MAP_FAILED)
            buf = map;
    }
    r->rc_mem = dicom_parse(buf, (size_t)st.st_size, &r->mem, r->why_mem, sizeof r->why_mem);
    r->rc_fd = dicom_parse_fd(fd, &r->fd, r->why_fd, sizeof r->why_fd);
    if (map != MAP_FAILED)
        munmap(map, (size_t)st.st_size);
    close(fd);
    return 0;
}

static int check_uids(const expect *e, const dicom_info *d, const char *how)
{
    int ok = strcmp(d->sop_instance_uid, e->inst) == 0 && strcmp(d->study_uid, e->study) == 0 &&
             strcmp(d->series_uid, e->series) == 0 && strcmp(d->sop_class_uid, e->cls) == 0 &&
             strcmp(d->transfer_syntax, e->ts) == 0;
    if (!ok)
        printf("# %s (%s): got inst=%s study=%s series=%s class=%s ts=%s\n", e->name, how,
               d->sop_instance_uid, d->study_uid, d->series_uid, d->sop_class_uid,
               d->transfer_syntax);
    return ok;
}

/* Checks every file whose name starts with prefix (all if ""), either the
 * good ones or the bad ones. Returns how many were checked. */
static int check_files(const char *prefix, int want_ok)
{
    int checked = 0;
    for (int i = 0; i < n_files; i++) {
        const expect *e = &files[i];
        if (strncmp(e->name, prefix, strlen(prefix)) != 0 || (e->rc == CERR_OK) != want_ok)
            continue;
        result r;
        CHECK(parse_both(e->name, &r) == 0);
        checked++;
        if (r.rc_mem != e->rc || r.rc_fd != e->rc) {
            printf("# %s: mem %d (%s), fd %d (%s), expected %d\n", e->name, r.rc_mem, r.why_mem,
                   r.rc_fd, r.why_fd, e->rc);
            CHECK(0);
            continue;
        }
        if (e->rc == CERR_OK) {
            CHECK(check_uids(e, &r.mem, "mem"));
            CHECK(check_uids(e, &r.fd, "fd"));
            CHECK(strcmp(r.mem.media_sop_instance, e->inst) == 0 || e->inst[0] == '-');
        } else {
            /* Every failure explains itself, the same way in both readers. */
            CHECK(r.why_mem[0] != '\0');
            CHECK_EQ_STR(r.why_mem, r.why_fd);
        }
    }
    return checked;
}

TEST(generated_index_loaded)
{
    CHECK(n_files > 250);
}

TEST(good_files_all_syntaxes)
{
    /* implicit, explicit LE/BE, deflated, sequences, private OB, JPEG,
     * nested, dcmconv and img2dcm outputs */
    int n = 0;
    for (int i = 0; i < n_files; i++)
        if (files[i].rc == CERR_OK && strncmp(files[i].name, "trunc_", 6) != 0)
            n++;
    CHECK(n >= 20);
    CHECK(check_files("", 1) >= n);
}

TEST(dcmtk_converted_files)
{
    CHECK_EQ_INT(check_files("dcmconv_", 1), 4);
    CHECK_EQ_INT(check_files("img2dcm_", 1), 1);
}

TEST(bad_files_give_expected_codes)
{
    int n = 0;
    for (int i = 0; i < n_files; i++)
        if (files[i].rc != CERR_OK && strncmp(files[i].name, "trunc_", 6) != 0)
            n++;
    CHECK(n >= 15);
    CHECK(check_files("", 0) >= n);
}

TEST(truncated_every_7_bytes)
{
    /* Three syntaxes, cut every 7 bytes through the whole file (many cuts
     * fall after the UIDs, inside an element: truncated), plus cuts at the
     * element boundaries after the UIDs (complete data sets: they read). */
    CHECK(check_files("trunc_seq_", 0) >= 300);
    CHECK(check_files("trunc_seq_", 1) >= 30);
}

TEST(truncated_pixel_data_and_deflate)
{
    /* The UIDs are all there, but the data set is cut short: refused. */
    CHECK_EQ_INT(check_files("trunc_pixels", 0), 1);
    CHECK_EQ_INT(check_files("trunc_pixels", 1), 0);
    CHECK_EQ_INT(check_files("trunc_jpeg_", 0), 2);
    CHECK_EQ_INT(check_files("trailing_bytes", 0), 1);
    CHECK_EQ_INT(check_files("trunc_deflated", 0), 2);
    result r;
    CHECK(parse_both("trunc_pixels.dcm", &r) == 0);
    CHECK_EQ_INT(r.rc_fd, CERR_TRUNCATED);
    CHECK(strstr(r.why_fd, "(7FE0,0010)") != NULL);
}

TEST(zero_padding_after_data_set)
{
    /* 8 and 200008 zero bytes after three syntaxes: read; 12 or 200004
     * (not whole 8-byte elements) and zeros then other bytes: refused. */
    CHECK_EQ_INT(check_files("zero_pad_8_", 1), 3);
    CHECK_EQ_INT(check_files("zero_pad_200008_", 1), 3);
    CHECK_EQ_INT(check_files("zero_pad_12", 0), 1);
    CHECK_EQ_INT(check_files("zero_pad_200004", 0), 1);
    CHECK_EQ_INT(check_files("zero_pad_then", 0), 1);
    result r;
    CHECK(parse_both("zero_pad_12.dcm", &r) == 0);
    CHECK(strstr(r.why_fd, "followed by 12 zero bytes") != NULL);
    CHECK(strstr(r.why_fd, "truncate -s") != NULL);
}

TEST(sop_class_needed_somewhere)
{
    /* Only in the meta group: taken from there; in neither: refused. */
    CHECK_EQ_INT(check_files("no_sop_class.dcm", 1), 1);
    CHECK_EQ_INT(check_files("no_sop_class_anywhere", 0), 1);
    result r;
    CHECK(parse_both("no_sop_class_anywhere.dcm", &r) == 0);
    CHECK(strstr(r.why_mem, "SOP Class UID") != NULL);
}

TEST(meta_values)
{
    result r;
    CHECK(parse_both("explicit_le.dcm", &r) == 0);
    CHECK_EQ_INT(r.rc_mem, CERR_OK);
    CHECK_EQ_STR(r.mem.media_sop_class, "1.2.840.10008.5.1.4.1.1.2");
    CHECK_EQ_STR(r.mem.media_sop_instance, r.mem.sop_instance_uid);
    /* the data set starts after the meta group: past 132 and within the
     * first few hundred bytes */
    CHECK(r.mem.meta_end > 132 && r.mem.meta_end < 400);
    CHECK_EQ_INT(r.mem.meta_end, r.fd.meta_end);
}

TEST(odd_uid_nul_padding_stripped)
{
    const expect *e = find("odd_uid.dcm");
    CHECK(e != NULL);
    result r;
    CHECK(parse_both("odd_uid.dcm", &r) == 0);
    CHECK_EQ_INT(r.rc_mem, CERR_OK);
    CHECK(e && strlen(r.mem.sop_instance_uid) % 2 == 1);
    CHECK(e && strcmp(r.mem.sop_instance_uid, e->inst) == 0);
}

TEST(why_names_offset_and_problem)
{
    result r;
    CHECK(parse_both("huge_meta_length.dcm", &r) == 0);
    CHECK_EQ_INT(r.rc_mem, CERR_TRUNCATED);
    CHECK_EQ_STR(r.why_mem, "offset 132: element (0002,0001) length 4294967280 runs past end of "
                            "file (size 1046)");
    CHECK(parse_both("no_series.dcm", &r) == 0);
    CHECK(strstr(r.why_mem, "(0020,000E)") != NULL);
    CHECK(parse_both("no_dicm.dcm", &r) == 0);
    CHECK(strstr(r.why_mem, "offset 128") != NULL);
    CHECK(parse_both("private_ts.dcm", &r) == 0);
    CHECK(strstr(r.why_mem, "1.2.3.4.5") != NULL);
    CHECK(parse_both("nested40.dcm", &r) == 0);
    CHECK(strstr(r.why_mem, "nested") != NULL);
    CHECK(parse_both("long_uid.dcm", &r) == 0);
    CHECK(strstr(r.why_mem, "65 characters") != NULL);
}

TEST(sparse_1gib_skipped_quickly)
{
    char path[400];
    snprintf(path, sizeof path, "%s/sparse_1gib.dcm", dir);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fd >= 0 && fstat(fd, &st) == 0 && st.st_size > (1 << 30));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    dicom_info d;
    char why[256];
    int rc = dicom_parse_fd(fd, &d, why, sizeof why);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK_EQ_INT(rc, CERR_OK);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    /* Reading 1 GiB (even of holes) takes far longer than this. */
    CHECK(secs < 0.5);
    const expect *e = find("sparse_1gib.dcm");
    CHECK(e && check_uids(e, &d, "fd"));
    if (fd >= 0)
        close(fd);
}

TEST(not_regular_file_is_io_error)
{
    int p[2];
    CHECK(pipe(p) == 0);
    dicom_info d;
    char why[128];
    CHECK_EQ_INT(dicom_parse_fd(p[0], &d, why, sizeof why), CERR_IO);
    CHECK_EQ_INT(dicom_parse_fd(-1, &d, why, sizeof why), CERR_IO);
    close(p[0]);
    close(p[1]);
}

TEST(check_magic_and_strerror)
{
    uint8_t b[132] = {0};
    CHECK(!dicom_check_magic(b, sizeof b));
    memcpy(b + 128, "DICM", 4);
    CHECK(dicom_check_magic(b, sizeof b));
    CHECK(!dicom_check_magic(b, 131));
    CHECK(!dicom_check_magic(NULL, 0));
    CHECK(strcmp(dicom_strerror(CERR_TRUNCATED), dicom_strerror(CERR_MISSING)) != 0);
    CHECK_EQ_STR(dicom_strerror(CERR_OK), "ok");
}

TEST(null_why_is_allowed)
{
    dicom_info d;
    CHECK_EQ_INT(dicom_parse((const uint8_t *)"x", 1, &d, NULL, 0), CERR_WRONG_TYPE);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/dicomfs-test-dicom.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash '%s/make_dicom.sh' '%s' >'%s/make.log' 2>&1", TEST_DATA_DIR,
             dir, dir);
    int made = system(cmd);
    if (made != 0) {
        snprintf(cmd, sizeof cmd, "sed 's/^/# /' '%s/make.log'", dir);
        (void)system(cmd);
    }
    load_index();
    RUN(generated_index_loaded);
    RUN(good_files_all_syntaxes);
    RUN(dcmtk_converted_files);
    RUN(bad_files_give_expected_codes);
    RUN(truncated_every_7_bytes);
    RUN(truncated_pixel_data_and_deflate);
    RUN(zero_padding_after_data_set);
    RUN(sop_class_needed_somewhere);
    RUN(meta_values);
    RUN(odd_uid_nul_padding_stripped);
    RUN(why_names_offset_and_problem);
    RUN(sparse_1gib_skipped_quickly);
    RUN(not_regular_file_is_io_error);
    RUN(check_magic_and_strerror);
    RUN(null_why_is_allowed);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    (void)system(cmd);
    return test_done();
}
