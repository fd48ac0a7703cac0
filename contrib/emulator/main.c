/* dicomfs-emulator: an offline stand-in for the Google Cloud Healthcare API,
 * Cloud Storage and OAuth2, for tests and demos.
 *
 * main owns the command line, start-up order (data dir, state, listening
 * socket, credentials, pre-created resources), the two lines printed on
 * stdout when ready, and a clean stop on SIGTERM/SIGINT.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "emu_internal.h"
#include "log.h"
#include "util.h"

#define MAX_BUCKETS 64

static void usage(FILE *f)
{
    fprintf(f, "usage: dicomfs-emulator [options]\n"
               "\n"
               "Offline Google Cloud Healthcare API (v1, v1beta1), Cloud Storage JSON API and\n"
               "OAuth2 token endpoint for tests and demos. Prints one 'export ...' line with the\n"
               "environment clients need, then 'dicomfs-emulator ready on URL'.\n"
               "\n"
               "  --listen HOST:PORT        address (default 127.0.0.1:0 = a free port)\n"
               "  --data DIR                state directory (default: a temp dir removed at exit)\n"
               "  --project P --location L --dataset D --store S\n"
               "                            pre-create a DICOM store (idempotent)\n"
               "  --bucket B                pre-create a bucket (repeatable)\n"
               "  --write-credentials FILE  write a service_account key (0600) whose token_uri\n"
               "                            is this emulator\n"
               "  --write-user-credentials FILE\n"
               "                            write an authorized_user file (refresh-token grant)\n"
               "  --no-auth                 accept API requests without a bearer token\n"
               "  --token-ttl S             access token lifetime in seconds (default 3600)\n"
               "  --tls-dir DIR             serve https with a certificate for 127.0.0.1 and\n"
               "                            localhost from a throwaway CA made at start; the CA\n"
               "                            is written to DIR/ca.pem (give it to clients:\n"
               "                            dicomfs -o ca_file=, curl --cacert, rclone\n"
               "                            --ca-cert); no metadata server (it is http-only)\n"
               "\n"
               "Service realism (defaults: none of it; see README 'Realistic profile'):\n"
               "  --profile realistic       op base 20 s, 50 ms per instance, 20 ms per MiB,\n"
               "                            --max-running-ops 10, latency 30 ms, bandwidth\n"
               "                            1000 Mbps, op-ttl 30 days; flags after it override\n"
               "  --time-scale F            multiply the op timing (base, instance, MiB) by F,\n"
               "                            0 < F <= 1 (short CI variant: 0.05)\n"
               "  --op-base-ms MS           each long-running operation takes at least MS\n"
               "  --lro-delay MS            the same (older name)\n"
               "  --op-instance-ms MS       ... plus MS per instance imported/exported/deleted\n"
               "  --op-mib-ms MS            ... plus MS per MiB imported/exported; counters move\n"
               "                            progressively over that time\n"
               "  --max-running-ops N       per-project cap of unfinished operations: a start\n"
               "                            beyond it answers 429 RESOURCE_EXHAUSTED (0 = none)\n"
               "  --op-ttl S                a finished operation expires S s after its end\n"
               "                            (404 on get, gone from list; default 2592000)\n"
               "  --latency-ms N            network latency added to every API request\n"
               "  --bandwidth-mbps N        bandwidth shared by all connections (0 = none)\n"
               "  --deny-agent-access B     the Healthcare service agent may neither read nor\n"
               "                            write bucket B (repeatable)\n"
               "  --refuse-tokens-for S     token grants answer 400 invalid_grant for S s\n"
               "\n"
               "Faults:\n"
               "  --seed N                  seed for fault injection (default 1)\n"
               "  --fail-rate F             fraction answered 429 (Retry-After: 1), 500 or 503\n"
               "  --reset-rate F            fraction whose connection is closed mid-request or\n"
               "                            mid-response\n"
               "  --partial-rate F          fraction of resumable chunks of which only a part\n"
               "                            (a 256 KiB multiple, maybe none) is kept: 308 + Range\n"
               "  --fault-latency-ms N      delay added to each faulted-path request\n"
               "  --malformed-rate F        fraction of JSON responses truncated or garbled\n"
               "  --fault-paths P[,P...]    only paths starting with one of these prefixes get\n"
               "                            faults (e.g. /upload/,/v1/)\n"
               "  --verbose                 log each request (never tokens)\n"
               "  --help                    this text\n"
               "\n"
               "Controls under /_emulator/ (never faulted or delayed; GET shows, POST sets):\n"
               "  stats                                 counters, projectNumber\n"
               "  faults?fail_rate=&reset_rate=&partial_rate=&malformed_rate=&latency_ms=\n"
               "        &fail_status=                   (failed requests get this status\n"
               "                                        instead of 429/500/503; 0 resets)\n"
               "  timing?base_ms=&instance_ms=&mib_ms=\n"
               "  limits?max_running_ops=&op_ttl_s=\n"
               "  network?latency_ms=&bandwidth_mbps=\n"
               "  agent-access?bucket=B&read=0|1&write=0|1\n"
               "  token-refusal?seconds=S               (0 ends it)\n"
               "  operations/expire?name=FULL_OP_NAME   (or all=1)\n"
               "  lose-response?match=SUBSTR&count=N    the next N requests whose 'METHOD\n"
               "                                        PATH' contains SUBSTR are carried out,\n"
               "                                        then their connection is closed\n"
               "Fault draws are repeatable for a seed; concurrent requests may take them in\n"
               "any order.\n");
}

enum {
    OPT_LISTEN = 256,
    OPT_DATA,
    OPT_PROJECT,
    OPT_LOCATION,
    OPT_DATASET,
    OPT_STORE,
    OPT_BUCKET,
    OPT_CREDS,
    OPT_USER_CREDS,
    OPT_NO_AUTH,
    OPT_TTL,
    OPT_LRO,
    OPT_SEED,
    OPT_FAIL,
    OPT_RESET,
    OPT_LATENCY,
    OPT_MALFORMED,
    OPT_PARTIAL,
    OPT_FAULT_PATHS,
    OPT_VERBOSE,
    OPT_HELP,
    OPT_FAULT_LATENCY,
    OPT_OP_BASE,
    OPT_OP_INSTANCE,
    OPT_OP_MIB,
    OPT_MAX_RUNNING,
    OPT_OP_TTL,
    OPT_BANDWIDTH,
    OPT_PROFILE,
    OPT_TIME_SCALE,
    OPT_DENY_AGENT,
    OPT_REFUSE_TOKENS,
    OPT_TLS_DIR,
};

/* The service-realism settings, gathered in command-line order (a profile
 * sets them all; a later flag overrides one) and applied after parsing. */
typedef struct realism {
    long base_ms, instance_ms, mib_ms;
    long max_running;
    long ttl_s;
    long latency_ms, bandwidth_mbps;
    double time_scale;
    /* A timing value given explicitly after --time-scale is taken as is
     * (base, instance, MiB): the scale is for the profile and for values
     * given before it. */
    bool unscaled[3];
    long refuse_tokens_s;
} realism;

/* The documented realistic profile (README, "Realistic profile"). */
static void profile_realistic(realism *rl)
{
    rl->base_ms = 20000;
    rl->instance_ms = 50;
    rl->mib_ms = 20;
    rl->unscaled[0] = rl->unscaled[1] = rl->unscaled[2] = false;
    rl->max_running = 10;
    rl->latency_ms = 30;
    rl->bandwidth_mbps = 1000;
    rl->ttl_s = 2592000;
}

typedef struct opts {
    const char *listen;
    const char *data;
    const char *project, *location, *dataset, *store;
    const char *buckets[MAX_BUCKETS];
    int nbuckets;
    const char *creds, *user_creds;
    const char *deny[MAX_BUCKETS];
    int ndeny;
    realism rl;
    bool verbose;
} opts;

static int parse_rate(const char *name, const char *v, double *out)
{
    char *end;
    double d = strtod(v, &end);
    if (*end || d < 0 || d > 1) {
        fprintf(stderr, "dicomfs-emulator: %s wants a fraction 0..1, got '%s'\n", name, v);
        return -1;
    }
    *out = d;
    return 0;
}

static int parse_int(const char *name, const char *v, long lo, long hi, long *out)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < lo || n > hi) {
        fprintf(stderr, "dicomfs-emulator: %s wants an integer %ld..%ld, got '%s'\n", name, lo, hi,
                v);
        return -1;
    }
    *out = n;
    return 0;
}

static int parse_args(int argc, char **argv, opts *o, emu_ctx *ctx)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"data", required_argument, NULL, OPT_DATA},
        {"project", required_argument, NULL, OPT_PROJECT},
        {"location", required_argument, NULL, OPT_LOCATION},
        {"dataset", required_argument, NULL, OPT_DATASET},
        {"store", required_argument, NULL, OPT_STORE},
        {"bucket", required_argument, NULL, OPT_BUCKET},
        {"write-credentials", required_argument, NULL, OPT_CREDS},
        {"write-user-credentials", required_argument, NULL, OPT_USER_CREDS},
        {"no-auth", no_argument, NULL, OPT_NO_AUTH},
        {"token-ttl", required_argument, NULL, OPT_TTL},
        {"lro-delay", required_argument, NULL, OPT_LRO},
        {"seed", required_argument, NULL, OPT_SEED},
        {"fail-rate", required_argument, NULL, OPT_FAIL},
        {"reset-rate", required_argument, NULL, OPT_RESET},
        {"latency-ms", required_argument, NULL, OPT_LATENCY},
        {"malformed-rate", required_argument, NULL, OPT_MALFORMED},
        {"partial-rate", required_argument, NULL, OPT_PARTIAL},
        {"fault-paths", required_argument, NULL, OPT_FAULT_PATHS},
        {"fault-latency-ms", required_argument, NULL, OPT_FAULT_LATENCY},
        {"op-base-ms", required_argument, NULL, OPT_OP_BASE},
        {"op-instance-ms", required_argument, NULL, OPT_OP_INSTANCE},
        {"op-mib-ms", required_argument, NULL, OPT_OP_MIB},
        {"max-running-ops", required_argument, NULL, OPT_MAX_RUNNING},
        {"op-ttl", required_argument, NULL, OPT_OP_TTL},
        {"bandwidth-mbps", required_argument, NULL, OPT_BANDWIDTH},
        {"profile", required_argument, NULL, OPT_PROFILE},
        {"time-scale", required_argument, NULL, OPT_TIME_SCALE},
        {"deny-agent-access", required_argument, NULL, OPT_DENY_AGENT},
        {"refuse-tokens-for", required_argument, NULL, OPT_REFUSE_TOKENS},
        {"tls-dir", required_argument, NULL, OPT_TLS_DIR},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    long n;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_LISTEN:
            o->listen = optarg;
            break;
        case OPT_DATA:
            o->data = optarg;
            break;
        case OPT_PROJECT:
            o->project = optarg;
            break;
        case OPT_LOCATION:
            o->location = optarg;
            break;
        case OPT_DATASET:
            o->dataset = optarg;
            break;
        case OPT_STORE:
            o->store = optarg;
            break;
        case OPT_BUCKET:
            if (o->nbuckets == MAX_BUCKETS) {
                fprintf(stderr, "dicomfs-emulator: at most %d --bucket\n", MAX_BUCKETS);
                return -1;
            }
            o->buckets[o->nbuckets++] = optarg;
            break;
        case OPT_CREDS:
            o->creds = optarg;
            break;
        case OPT_USER_CREDS:
            o->user_creds = optarg;
            break;
        case OPT_NO_AUTH:
            ctx->no_auth = true;
            break;
        case OPT_TTL:
            if (parse_int("--token-ttl", optarg, 1, 86400 * 7, &n) != 0)
                return -1;
            ctx->token_ttl = (int)n;
            break;
        case OPT_LRO:
        case OPT_OP_BASE:
            if (parse_int(c == OPT_LRO ? "--lro-delay" : "--op-base-ms", optarg, 0, 3600000,
                          &o->rl.base_ms) != 0)
                return -1;
            o->rl.unscaled[0] = o->rl.time_scale > 0;
            break;
        case OPT_OP_INSTANCE:
            if (parse_int("--op-instance-ms", optarg, 0, 600000, &o->rl.instance_ms) != 0)
                return -1;
            o->rl.unscaled[1] = o->rl.time_scale > 0;
            break;
        case OPT_OP_MIB:
            if (parse_int("--op-mib-ms", optarg, 0, 600000, &o->rl.mib_ms) != 0)
                return -1;
            o->rl.unscaled[2] = o->rl.time_scale > 0;
            break;
        case OPT_MAX_RUNNING:
            if (parse_int("--max-running-ops", optarg, 0, 1000000, &o->rl.max_running) != 0)
                return -1;
            break;
        case OPT_OP_TTL:
            if (parse_int("--op-ttl", optarg, 0, 315360000, &o->rl.ttl_s) != 0)
                return -1;
            break;
        case OPT_BANDWIDTH:
            if (parse_int("--bandwidth-mbps", optarg, 0, 1000000, &o->rl.bandwidth_mbps) != 0)
                return -1;
            break;
        case OPT_REFUSE_TOKENS:
            if (parse_int("--refuse-tokens-for", optarg, 0, 86400 * 7, &o->rl.refuse_tokens_s) != 0)
                return -1;
            break;
        case OPT_PROFILE:
            if (strcmp(optarg, "realistic") != 0) {
                fprintf(stderr, "dicomfs-emulator: --profile knows only 'realistic', got '%s'\n",
                        optarg);
                return -1;
            }
            profile_realistic(&o->rl);
            break;
        case OPT_TIME_SCALE: {
            char *end;
            double f = strtod(optarg, &end);
            if (*end || !(f > 0 && f <= 1)) {
                fprintf(stderr, "dicomfs-emulator: --time-scale wants 0 < F <= 1, got '%s'\n",
                        optarg);
                return -1;
            }
            o->rl.time_scale = f;
            o->rl.unscaled[0] = o->rl.unscaled[1] = o->rl.unscaled[2] = false;
            break;
        }
        case OPT_DENY_AGENT:
            if (o->ndeny == MAX_BUCKETS) {
                fprintf(stderr, "dicomfs-emulator: at most %d --deny-agent-access\n", MAX_BUCKETS);
                return -1;
            }
            o->deny[o->ndeny++] = optarg;
            break;
        case OPT_SEED: {
            char *end;
            ctx->fault_cfg.seed = strtoull(optarg, &end, 10);
            if (*end) {
                fprintf(stderr, "dicomfs-emulator: --seed wants an integer, got '%s'\n", optarg);
                return -1;
            }
            break;
        }
        case OPT_FAIL:
            if (parse_rate("--fail-rate", optarg, &ctx->fault_cfg.fail_rate) != 0)
                return -1;
            break;
        case OPT_RESET:
            if (parse_rate("--reset-rate", optarg, &ctx->fault_cfg.reset_rate) != 0)
                return -1;
            break;
        case OPT_MALFORMED:
            if (parse_rate("--malformed-rate", optarg, &ctx->fault_cfg.malformed_rate) != 0)
                return -1;
            break;
        case OPT_PARTIAL:
            if (parse_rate("--partial-rate", optarg, &ctx->fault_cfg.partial_rate) != 0)
                return -1;
            break;
        case OPT_LATENCY:
            if (parse_int("--latency-ms", optarg, 0, 600000, &o->rl.latency_ms) != 0)
                return -1;
            break;
        case OPT_FAULT_LATENCY:
            if (parse_int("--fault-latency-ms", optarg, 0, 600000, &n) != 0)
                return -1;
            ctx->fault_cfg.latency_ms = (int)n;
            break;
        case OPT_FAULT_PATHS:
            ctx->fault_cfg.paths = optarg;
            break;
        case OPT_TLS_DIR:
            ctx->tls_dir = optarg;
            break;
        case OPT_VERBOSE:
            o->verbose = true;
            break;
        case OPT_HELP:
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dicomfs-emulator: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    int hc = !!o->project + !!o->location + !!o->dataset + !!o->store;
    if (hc != 0 && hc != 4 && !(o->project && hc == 1)) {
        fprintf(stderr, "dicomfs-emulator: --project, --location, --dataset and --store go "
                        "together\n");
        return -1;
    }
    return 0;
}

/* Binds and listens before anything is served, so the port is known for
 * base URLs and credentials before the first request can arrive. */
static int open_listener(const char *spec, emu_ctx *ctx)
{
    char host[64] = "127.0.0.1";
    long port = 0;
    if (spec) {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof(host) ||
            parse_int("--listen port", colon + 1, 0, 65535, &port) != 0) {
            fprintf(stderr, "dicomfs-emulator: --listen wants HOST:PORT, got '%s'\n", spec);
            return -1;
        }
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        if (strcmp(host, "localhost") == 0 || host[0] == '\0')
            strcpy(host, "127.0.0.1");
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "dicomfs-emulator: --listen host must be an IPv4 address, got '%s'\n",
                host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 128) != 0) {
        fprintf(stderr, "dicomfs-emulator: cannot listen on %s:%ld: %s\n", host, port,
                strerror(errno));
        close(fd);
        return -1;
    }
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    ctx->port = ntohs(sa.sin_port);
    snprintf(ctx->host, sizeof(ctx->host), "%s", host);
    snprintf(ctx->base_url, sizeof(ctx->base_url), "%s://%s:%d", ctx->tls_dir ? "https" : "http",
             host, ctx->port);
    return fd;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int setup_data_dir(const char *data, emu_ctx *ctx)
{
    if (data) {
        int rc = util_mkdirs(data, 0700);
        if (rc != 0) {
            fprintf(stderr, "dicomfs-emulator: cannot create --data %s: %s\n", data, strerror(-rc));
            return -1;
        }
        ctx->data_dir = realpath(data, NULL);
    } else {
        char tmpl[] = "/tmp/dicomfs-emulator.XXXXXX";
        if (!mkdtemp(tmpl)) {
            fprintf(stderr, "dicomfs-emulator: mkdtemp: %s\n", strerror(errno));
            return -1;
        }
        ctx->data_dir = strdup(tmpl);
        ctx->data_dir_is_temp = true;
        log_info("no --data: using %s (removed at exit)", tmpl);
    }
    return ctx->data_dir ? 0 : -1;
}

static int precreate(emu_ctx *ctx, const opts *o)
{
    for (int i = 0; i < o->nbuckets; i++) {
        int rc = emu_gcs_bucket_create(ctx, o->buckets[i]);
        if (rc != 0 && rc != -EEXIST) {
            fprintf(stderr, "dicomfs-emulator: --bucket %s: %s\n", o->buckets[i],
                    rc == -EINVAL ? "invalid bucket name" : strerror(-rc));
            return -1;
        }
    }
    if (o->project && o->location &&
        emu_hc_precreate(ctx, o->project, o->location, o->dataset, o->store) != 0) {
        fprintf(stderr, "dicomfs-emulator: cannot pre-create the DICOM store\n");
        return -1;
    }
    return 0;
}

/* Puts the realism settings into the context (after parsing: the time
 * scale applies to the final timing values, whichever flag set them). */
static int apply_realism(emu_ctx *ctx, const opts *o)
{
    const realism *rl = &o->rl;
    double f = rl->time_scale > 0 ? rl->time_scale : 1.0;
    atomic_store(&ctx->ops.base_ms, (int)((double)rl->base_ms * (rl->unscaled[0] ? 1 : f)));
    atomic_store(&ctx->ops.instance_ms, (int)((double)rl->instance_ms * (rl->unscaled[1] ? 1 : f)));
    atomic_store(&ctx->ops.mib_ms, (int)((double)rl->mib_ms * (rl->unscaled[2] ? 1 : f)));
    atomic_store(&ctx->ops.max_running, (int)rl->max_running);
    atomic_store(&ctx->ops.ttl_s, rl->ttl_s);
    ctx->net = emu_net_new((int)rl->latency_ms, (int)rl->bandwidth_mbps);
    ctx->iam = emu_iam_new();
    if (!ctx->net || !ctx->iam)
        return -1;
    for (int i = 0; i < o->ndeny; i++)
        if (emu_iam_set(ctx->iam, o->deny[i], 0, 0) != 0)
            return -1;
    if (rl->refuse_tokens_s > 0)
        atomic_store(&ctx->refuse_tokens_until_ms, emu_mono_ms() + rl->refuse_tokens_s * 1000);
    return 0;
}

static void print_ready(emu_ctx *ctx, const opts *o)
{
    printf("export STORAGE_EMULATOR_HOST=%s CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE=%s/",
           ctx->base_url, ctx->base_url);
    /* The metadata server is plain http on GCE; an https-only port cannot
     * be one. With TLS: the CA for curl (CURL_CA_BUNDLE) and for OpenSSL's
     * and Go's default paths (SSL_CERT_FILE: Python, rclone). */
    if (ctx->tls_dir)
        printf(" CURL_CA_BUNDLE=%s/ca.pem SSL_CERT_FILE=%s/ca.pem", ctx->tls_dir, ctx->tls_dir);
    else
        printf(" GCE_METADATA_HOST=%s:%d", ctx->host, ctx->port);
    if (o->creds)
        printf(" GOOGLE_APPLICATION_CREDENTIALS=%s", o->creds);
    printf("\ndicomfs-emulator ready on %s\n", ctx->base_url);
    fflush(stdout);
}

static void cleanup(emu_ctx *ctx)
{
    emu_oauth_close(ctx);
    emu_store_close(ctx->store);
    emu_faults_free(ctx->faults);
    emu_net_free(ctx->net);
    emu_iam_free(ctx->iam);
    emu_uploads_free(ctx->uploads);
    free(ctx->tls_key);
    free(ctx->tls_cert);
    if (ctx->data_dir_is_temp)
        nftw(ctx->data_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(ctx->data_dir);
}

int main(int argc, char **argv)
{
    static emu_ctx ctx;
    opts o = {.rl = {.ttl_s = 2592000}};
    ctx.token_ttl = 3600;
    ctx.fault_cfg.seed = 1;
    log_init("dicomfs-emulator", false, LOG_WARNING);
    if (parse_args(argc, argv, &o, &ctx) != 0)
        return 2;
    if (o.verbose)
        log_set_level(LOG_DEBUG);
    ctx.project = (char *)(o.project ? o.project : "emulator-project");

    /* Signals are taken synchronously by the main thread only. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (setup_data_dir(o.data, &ctx) != 0)
        return 1;
    int rc = 1;
    int lfd = -1;
    ctx.faults = emu_faults_new(&ctx.fault_cfg);
    ctx.uploads = emu_uploads_new();
    if (!ctx.faults || !ctx.uploads || apply_realism(&ctx, &o) != 0 || !emu_store_open(&ctx) ||
        emu_oauth_open(&ctx) != 0)
        goto out;
    lfd = open_listener(o.listen, &ctx);
    if (lfd < 0)
        goto out;
    if (ctx.tls_dir && emu_tls_make(&ctx, ctx.tls_dir) != 0)
        goto out;
    if (o.creds && emu_oauth_write_credentials(&ctx, o.creds) != 0)
        goto out;
    if (o.user_creds && emu_oauth_write_user_credentials(&ctx, o.user_creds) != 0)
        goto out;
    if (emu_hc_init(&ctx) != 0) {
        fprintf(stderr, "dicomfs-emulator: cannot load the Healthcare state in %s\n", ctx.data_dir);
        goto out;
    }
    if (precreate(&ctx, &o) != 0 || emu_server_start(&ctx, lfd) != 0) {
        emu_hc_shutdown(&ctx);
        goto out;
    }
    lfd = -1; /* owned by the server now */
    print_ready(&ctx, &o);

    int sig = 0;
    sigwait(&sigs, &sig);
    log_info("signal %d: stopping", sig);
    atomic_store(&ctx.shutting_down, true);
    emu_server_stop(&ctx);
    emu_hc_shutdown(&ctx);
    rc = 0;
out:
    if (lfd >= 0)
        close(lfd);
    cleanup(&ctx);
    return rc;
}
