/* Unit tests for fs/options.c: parsing, defaults, bad SOURCE and staging. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fuse_opt.h>

#include "../../fs/options.h"
#include "testlib.h"

static int parse(fs_options *o, char *err, const char *const *args)
{
    int argc = 0;
    while (args[argc])
        argc++;
    return fs_options_parse(argc, (char **)args, o, err, 512);
}

/* Whether the FUSE arguments contain s as an argument or inside a -o list. */
static int fuse_has(const fs_options *o, const char *s)
{
    for (int i = 0; i < o->fuse_args->argc; i++)
        if (strstr(o->fuse_args->argv[i], s))
            return 1;
    return 0;
}

TEST(location_defaults)
{
    setenv("XDG_CACHE_HOME", "/tmp/xdg-test", 1);
    fs_options o;
    char err[512] = "";
    const char *a[] = {"dicomfs", "projects/p/locations/l",  "/mnt",
                       "-o",      "staging=gs://bkt/stage/", NULL};
    CHECK_EQ_INT(parse(&o, err, a), 0);
    CHECK_EQ_STR(o.location, "projects/p/locations/l");
    CHECK(o.dataset == NULL);
    CHECK_EQ_STR(o.mountpoint, "/mnt");
    CHECK_EQ_STR(o.staging_bucket, "bkt");
    CHECK_EQ_STR(o.staging_prefix, "stage");
    CHECK_EQ_STR(o.export_bucket, "bkt");
    CHECK_EQ_STR(o.export_prefix, "stage-exports");
    CHECK_EQ_STR(o.export_to, "gs://bkt/stage-exports");
    CHECK_EQ_INT(o.uploads, 0); /* adaptive */
    CHECK_EQ_INT(o.upload_nice, FS_OPTIONS_DEFAULT_UPLOAD_NICE);
    CHECK(o.commit_delay == FS_OPTIONS_DEFAULT_COMMIT_DELAY);
    CHECK(o.timeout == FS_OPTIONS_DEFAULT_TIMEOUT);
    CHECK(!o.sync_close);
    CHECK_EQ_INT(o.stream_min_mib, FS_OPTIONS_DEFAULT_STREAM_MIN_MIB);
    CHECK_EQ_INT(o.imports, FS_OPTIONS_DEFAULT_IMPORTS);
    CHECK(o.batch_max_files == FS_OPTIONS_DEFAULT_BATCH_FILES);
    CHECK(o.batch_max_bytes == FS_OPTIONS_DEFAULT_BATCH_BYTES);
    CHECK(o.cache_max == 0); /* decided at mount */
    CHECK(!o.upload_present);
    CHECK(!o.allow_delete);
    CHECK(!o.no_auth);
    CHECK(!o.foreground);
    char *want = fs_options_default_cache_dir("projects/p/locations/l", geteuid());
    CHECK_EQ_STR(o.cache_dir, want);
    free(want);
    CHECK(fuse_has(&o, "default_permissions"));
    CHECK(fuse_has(&o, "fsname=projects/p/locations/l"));
    CHECK(!fuse_has(&o, "staging"));
    CHECK(!fuse_has(&o, "allow_other"));
    fs_options_free(&o);
}

TEST(dataset_source_and_all_options)
{
    fs_options o;
    char err[512] = "";
    const char *a[] = {
        "dicomfs",
        "projects/p/locations/l/datasets/d/",
        "/m",
        "-f",
        "-s",
        "-o",
        "staging=gs://b,export_to=gs://e/x/y,cache_dir=/tmp/c,credentials=/k.json,"
        "endpoint=http://127.0.0.1:1/,storage_endpoint=http://127.0.0.1:2,"
        "uploads=4,upload_nice=0,commit_delay=0.25,stream_min=0,allow_delete,no_auth,sync_close,"
        "imports=2,batch_max=3G,cache_max=256MiB,upload_present,attr_timeout=3,timeout=7.5",
        NULL};
    CHECK_EQ_INT(parse(&o, err, a), 0);
    CHECK_EQ_STR(err, "");
    CHECK_EQ_STR(o.source, "projects/p/locations/l/datasets/d");
    CHECK_EQ_STR(o.dataset, "projects/p/locations/l/datasets/d");
    CHECK_EQ_STR(o.location, "projects/p/locations/l");
    CHECK_EQ_STR(o.staging_bucket, "b");
    CHECK_EQ_STR(o.staging_prefix, "");
    CHECK_EQ_STR(o.export_bucket, "e");
    CHECK_EQ_STR(o.export_prefix, "x/y");
    CHECK_EQ_STR(o.cache_dir, "/tmp/c");
    CHECK_EQ_STR(o.credentials, "/k.json");
    CHECK_EQ_STR(o.endpoint, "http://127.0.0.1:1/");
    CHECK_EQ_STR(o.storage_endpoint, "http://127.0.0.1:2");
    CHECK_EQ_INT(o.uploads, 4);
    CHECK_EQ_INT(o.upload_nice, 0);
    CHECK(o.commit_delay == 0.25);
    CHECK(o.timeout == 7.5);
    CHECK_EQ_INT(o.stream_min_mib, 0);
    CHECK_EQ_INT(o.imports, 2);
    CHECK(o.batch_max_bytes == 3ull << 30);
    CHECK(o.batch_max_files == FS_OPTIONS_DEFAULT_BATCH_FILES);
    CHECK(o.cache_max == 256ull << 20);
    CHECK(o.upload_present);
    CHECK(o.sync_close);
    CHECK(o.allow_delete);
    CHECK(o.no_auth);
    CHECK(o.foreground);
    CHECK(o.single_thread);
    /* FUSE's own options pass through, ours and -f/-s do not */
    CHECK(fuse_has(&o, "attr_timeout=3"));
    CHECK(!fuse_has(&o, "uploads"));
    CHECK(!fuse_has(&o, "no_auth"));
    for (int i = 0; i < o.fuse_args->argc; i++) {
        CHECK(strcmp(o.fuse_args->argv[i], "-f") != 0);
        CHECK(strcmp(o.fuse_args->argv[i], "-s") != 0);
    }
    fs_options_free(&o);
}

TEST(relative_paths_made_absolute)
{
    /* the daemon runs in "/" after detaching */
    fs_options o;
    char err[512] = "";
    char cwd[4096];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    const char *a[] = {"dicomfs", "projects/p/locations/l", "/m",
                       "-ostaging=gs://b,credentials=k.json,cache_dir=c", NULL};
    CHECK_EQ_INT(parse(&o, err, a), 0);
    char want[4200];
    snprintf(want, sizeof want, "%s/k.json", cwd);
    CHECK_EQ_STR(o.credentials, want);
    snprintf(want, sizeof want, "%s/c", cwd);
    CHECK_EQ_STR(o.cache_dir, want);
    fs_options_free(&o);
}

TEST(ca_file_checked_and_absolute)
{
    fs_options o;
    char err[512] = "";
    char cwd[4096];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    FILE *f = fopen("test_options_ca.pem", "w");
    CHECK(f != NULL);
    fclose(f);
    const char *a[] = {"dicomfs", "projects/p/locations/l", "/m",
                       "-ostaging=gs://b,ca_file=test_options_ca.pem", NULL};
    CHECK_EQ_INT(parse(&o, err, a), 0);
    char want[4200];
    snprintf(want, sizeof want, "%s/test_options_ca.pem", cwd);
    CHECK_EQ_STR(o.ca_file, want);
    fs_options_free(&o);
    unlink("test_options_ca.pem");
    const char *b[] = {"dicomfs", "projects/p/locations/l", "/m",
                       "-ostaging=gs://b,ca_file=/nonexistent/ca.pem", NULL};
    CHECK(parse(&o, err, b) != 0);
    CHECK(strstr(err, "ca_file '/nonexistent/ca.pem'") != NULL);
    fs_options_free(&o);
}

TEST(empty_staging_prefix_default_export)
{
    fs_options o;
    char err[512] = "";
    const char *a[] = {"dicomfs", "projects/p/locations/l", "/m", "-ostaging=gs://b/", NULL};
    CHECK_EQ_INT(parse(&o, err, a), 0);
    CHECK_EQ_STR(o.export_to, "gs://b/dicomfs-exports");
    fs_options_free(&o);
}

TEST(fstab_style)
{
    /* mount.fuse3 runs: dicomfs SOURCE MOUNTPOINT -o rw,OPTS */
    fs_options o;
    char err[512] = "";
    const char *a[] = {"dicomfs",
                       "projects/p/locations/l/datasets/d",
                       "/mnt/dicom",
                       "-o",
                       "rw,staging=gs://b/p,_netdev,nofail,x-systemd.automount,allow_other",
                       NULL};
    CHECK_EQ_INT(parse(&o, err, a), 0);
    CHECK_EQ_STR(o.staging_bucket, "b");
    CHECK(fuse_has(&o, "allow_other")); /* only because it was asked for */
    CHECK(fuse_has(&o, "rw"));
    CHECK(!fuse_has(&o, "_netdev"));
    CHECK(!fuse_has(&o, "nofail"));
    CHECK(!fuse_has(&o, "x-systemd"));
    fs_options_free(&o);
}

TEST(debug_passes_to_fuse)
{
    fs_options o;
    char err[512] = "";
    const char *a[] = {"dicomfs", "projects/p/locations/l", "/m", "-d", "-ostaging=gs://b/p", NULL};
    CHECK_EQ_INT(parse(&o, err, a), 0);
    CHECK(o.debug);
    CHECK(fuse_has(&o, "-d"));
    fs_options_free(&o);
}

TEST(help_and_version)
{
    fs_options o;
    char err[512] = "";
    const char *h[] = {"dicomfs", "--help", NULL};
    CHECK_EQ_INT(parse(&o, err, h), 0);
    CHECK(o.show_help);
    fs_options_free(&o);
    const char *v[] = {"dicomfs", "--version", NULL};
    CHECK_EQ_INT(parse(&o, err, v), 0);
    CHECK(o.show_version);
    fs_options_free(&o);
    const char *v2[] = {"dicomfs", "-V", NULL};
    CHECK_EQ_INT(parse(&o, err, v2), 0);
    CHECK(o.show_version);
    fs_options_free(&o);
}

static void expect_error(const char *const *a, const char *needle)
{
    fs_options o;
    char err[512] = "";
    int rc = parse(&o, err, a);
    CHECK_EQ_INT(rc, -1);
    if (!strstr(err, needle)) {
        test_cur_failed_ = 1;
        printf("# message \"%s\" lacks \"%s\"\n", err, needle);
    }
    fs_options_free(&o);
}

TEST(bad_sources)
{
    static const char *const bad[] = {
        "projects/p",
        "projects/p/locations",
        "projects//locations/l",
        "project/p/locations/l",
        "projects/p/location/l",
        "projects/p/locations/l/datasets",
        "projects/p/locations/l/datasets/",
        "projects/p/locations/l/datasets/d/dicomStores/s",
        "projects/p/locations/l/stores/d",
        "/projects/p/locations/l",
        "projects/p/locations/../datasets/d",
        "projects/p q/locations/l",
        "projects/p/locations/l//",
        "gs://bucket/x",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *a[] = {"dicomfs", bad[i], "/m", "-ostaging=gs://b/p", NULL};
        printf("# source '%s'\n", bad[i]);
        expect_error(a, "SOURCE");
    }
}

TEST(source_parse_direct)
{
    char *loc, *ds;
    char err[256];
    CHECK_EQ_INT(fs_source_parse("projects/my-proj/locations/us-central1/datasets/a.b_c", &loc, &ds,
                                 err, sizeof err),
                 0);
    CHECK_EQ_STR(loc, "projects/my-proj/locations/us-central1");
    CHECK_EQ_STR(ds, "projects/my-proj/locations/us-central1/datasets/a.b_c");
    free(loc);
    free(ds);
    CHECK_EQ_INT(fs_source_parse(NULL, &loc, &ds, err, sizeof err), -1);
    CHECK(loc == NULL && ds == NULL);
}

TEST(missing_and_bad_staging)
{
    const char *none[] = {"dicomfs", "projects/p/locations/l", "/m", NULL};
    expect_error(none, "staging");
    const char *http[] = {"dicomfs", "projects/p/locations/l", "/m", "-ostaging=http://b/p", NULL};
    expect_error(http, "staging");
    const char *nobucket[] = {"dicomfs", "projects/p/locations/l", "/m", "-ostaging=gs://", NULL};
    expect_error(nobucket, "staging");
    const char *wild[] = {"dicomfs", "projects/p/locations/l", "/m", "-ostaging=gs://b/p*", NULL};
    expect_error(wild, "staging");
    const char *exp[] = {"dicomfs", "projects/p/locations/l", "/m",
                         "-ostaging=gs://b/p,export_to=s3://x", NULL};
    expect_error(exp, "export_to");
}

TEST(bad_numbers_and_args)
{
    const char *u0[] = {"dicomfs", "projects/p/locations/l", "/m", "-ostaging=gs://b,uploads=0",
                        NULL};
    expect_error(u0, "uploads");
    const char *ux[] = {"dicomfs", "projects/p/locations/l", "/m", "-ostaging=gs://b,uploads=8x",
                        NULL};
    expect_error(ux, "uploads");
    const char *nice[] = {"dicomfs", "projects/p/locations/l", "/m",
                          "-ostaging=gs://b,upload_nice=20", NULL};
    expect_error(nice, "upload_nice");
    const char *nneg[] = {"dicomfs", "projects/p/locations/l", "/m",
                          "-ostaging=gs://b,upload_nice=-1", NULL};
    expect_error(nneg, "upload_nice");
    const char *cd[] = {"dicomfs", "projects/p/locations/l", "/m",
                        "-ostaging=gs://b,commit_delay=-1", NULL};
    expect_error(cd, "commit_delay");
    const char *to[] = {"dicomfs", "projects/p/locations/l", "/m", "-ostaging=gs://b,timeout=0",
                        NULL};
    expect_error(to, "timeout");
    const char *nomnt[] = {"dicomfs", "projects/p/locations/l", "-ostaging=gs://b", NULL};
    expect_error(nomnt, "MOUNTPOINT");
    const char *extra[] = {"dicomfs", "projects/p/locations/l", "/m",
                           "/x",      "-ostaging=gs://b",       NULL};
    expect_error(extra, "unexpected argument");
}

TEST(default_cache_dir)
{
    char *root = fs_options_default_cache_dir("projects/p/locations/l", 0);
    CHECK(root && strncmp(root, "/var/cache/dicomfs/", 19) == 0 && strlen(root) == 19 + 16);
    char *other = fs_options_default_cache_dir("projects/p/locations/m", 0);
    CHECK(other && strcmp(root, other) != 0);
    char *again = fs_options_default_cache_dir("projects/p/locations/l", 0);
    CHECK_EQ_STR(again, root);
    setenv("XDG_CACHE_HOME", "/x/cache", 1);
    char *user = fs_options_default_cache_dir("projects/p/locations/l", 1000);
    CHECK(user && strncmp(user, "/x/cache/dicomfs/", 17) == 0);
    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", "/home/u", 1);
    char *home = fs_options_default_cache_dir("projects/p/locations/l", 1000);
    CHECK(home && strncmp(home, "/home/u/.cache/dicomfs/", 23) == 0);
    free(root);
    free(other);
    free(again);
    free(user);
    free(home);
}

TEST(prepare_cache_dir)
{
    char tmpl[] = "/tmp/dicomfs-opt-XXXXXX";
    CHECK(mkdtemp(tmpl) != NULL);
    char dir[256], file[256];
    snprintf(dir, sizeof dir, "%s/a/b", tmpl);
    char err[256] = "";
    CHECK_EQ_INT(fs_options_prepare_cache_dir(dir, err, sizeof err), 0);
    struct stat st;
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);
    /* a world-readable directory is made private */
    chmod(dir, 0755);
    CHECK_EQ_INT(fs_options_prepare_cache_dir(dir, err, sizeof err), 0);
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);
    /* a file is rejected with a message */
    snprintf(file, sizeof file, "%s/f", tmpl);
    FILE *fp = fopen(file, "w");
    CHECK(fp != NULL);
    if (fp)
        fclose(fp);
    CHECK_EQ_INT(fs_options_prepare_cache_dir(file, err, sizeof err), -ENOTDIR);
    CHECK(strstr(err, "not a directory") != NULL);
    CHECK_EQ_INT(fs_options_prepare_cache_dir("relative", err, sizeof err), -EINVAL);
    /* a directory above it that others may write (not sticky) is refused */
    snprintf(file, sizeof file, "%s/a", tmpl);
    chmod(file, 0777);
    CHECK_EQ_INT(fs_options_prepare_cache_dir(dir, err, sizeof err), -EPERM);
    CHECK(strstr(err, "writable by others") != NULL);
    chmod(file, 01777); /* sticky, like /tmp: fine */
    CHECK_EQ_INT(fs_options_prepare_cache_dir(dir, err, sizeof err), 0);
    chmod(file, 0700);
    snprintf(file, sizeof file, "%s/f", tmpl);
    unlink(file);
    rmdir(dir);
    snprintf(dir, sizeof dir, "%s/a", tmpl);
    rmdir(dir);
    rmdir(tmpl);
}

int main(void)
{
    RUN(location_defaults);
    RUN(dataset_source_and_all_options);
    RUN(relative_paths_made_absolute);
    RUN(ca_file_checked_and_absolute);
    RUN(empty_staging_prefix_default_export);
    RUN(fstab_style);
    RUN(debug_passes_to_fuse);
    RUN(help_and_version);
    RUN(bad_sources);
    RUN(source_parse_direct);
    RUN(missing_and_bad_staging);
    RUN(bad_numbers_and_args);
    RUN(default_cache_dir);
    RUN(prepare_cache_dir);
    return test_done();
}
