/* auth: Application Default Credentials discovery, OAuth grants and the
 * access-token cache.
 *
 * Secrets (private keys, refresh tokens, client secrets, assertions, access
 * tokens) live only in memory, are wiped with OPENSSL_cleanse before being
 * freed, and never reach a log line or an cerr_detail message.
 */
#include "auth.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "deadline.h"
#include "log.h"
#include "util.h"

#define AUTH_DEFAULT_TOKEN_URI "https://oauth2.googleapis.com/token"
#define AUTH_METADATA_DEFAULT_BASE "http://metadata.google.internal"
#define AUTH_METADATA_TOKEN_PATH "/computeMetadata/v1/instance/service-accounts/default/token"
#define AUTH_ADC_FILE "application_default_credentials.json"
#define AUTH_MAX_FILE_BYTES (1024 * 1024)
#define AUTH_JWT_LIFETIME_S 3600
#define AUTH_DEFAULT_EXPIRES_S 3600.0
/* A forced refresh is skipped when another thread refreshed this recently:
 * many requests failing with 401 at once must cause one refresh, not many. */
#define AUTH_FORCE_WINDOW_S 1.0
/* Refresh ahead when less than min(this, lifetime/4) remains. */
#define AUTH_REFRESH_AHEAD_S 300.0
/* Metadata probe: the default host is usually absent (DNS failure or no
 * route), so give up fast; an explicit GCE_METADATA_HOST gets a bit longer. */
#define AUTH_PROBE_DEFAULT_TIMEOUT_S 1
#define AUTH_PROBE_EXPLICIT_TIMEOUT_S 3
#define AUTH_TOKEN_TIMEOUT_S 60
/* Secret substrings this long that appear in a server message get it withheld. */
#define AUTH_SCRUB_WINDOW 12
/* Internal, never returned: the answer did not come from a metadata server
 * (far from every CERR_ class). */
#define AUTH_NOT_METADATA (-100)

struct auth_provider {
    auth_kind kind;
    http_client *http;
    http_client *own_http; /* created here when the caller passed none */
    char *desc;            /* "service account x@y from /path": no secrets */
    char *token_uri;       /* grant endpoint, or the metadata token URL */
    char *client_email;
    char *private_key_id;
    EVP_PKEY *pkey;
    char *client_id;
    char *client_secret;
    char *refresh_token;
    char *quota_project;
    /* The credentials file and its identity when read: a change (say a new
     * `gcloud auth application-default login`) is read again before the
     * next token request. NULL for the metadata server. */
    char *path;
    struct stat file_st;

    /* Token cache, guarded by lock. One thread refreshes (refreshing=true);
     * the others wait on cond until generation changes. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool refreshing;
    unsigned long generation; /* bumped after every refresh attempt */
    char *token;
    double lifetime_s;
    double expires_at;   /* CLOCK_MONOTONIC seconds */
    double refreshed_at; /* CLOCK_MONOTONIC seconds of the last success */
    int last_rc;
    cerr_detail last_err;
};

/* ---- small helpers ---- */

static void secret_free(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static void set_err(cerr_detail *err, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(cerr_detail *err, const char *status, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    /* The class is the value returned: the public entry points copy it in. */
    cerr_vset(err, CERR_OK, 0, status, fmt, ap);
    va_end(ap);
}

/* Passes the http layer's error on (status, codes) with our own message,
 * which says where the token was asked for. */
static void relay_err(cerr_detail *err, const cerr_detail *herr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void relay_err(cerr_detail *err, const cerr_detail *herr, const char *fmt, ...)
{
    if (!err)
        return;
    *err = *herr;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

/* Withholds a server message that quotes any part of a secret we sent
 * (some endpoints echo the request back). */
static void scrub_message(cerr_detail *err, const char *const *secrets, size_t n)
{
    if (!err)
        return;
    for (size_t i = 0; i < n; i++) {
        const char *s = secrets[i];
        size_t len = s ? strlen(s) : 0;
        for (size_t off = 0; len >= AUTH_SCRUB_WINDOW && off + AUTH_SCRUB_WINDOW <= len; off++) {
            char window[AUTH_SCRUB_WINDOW + 1];
            memcpy(window, s + off, AUTH_SCRUB_WINDOW);
            window[AUTH_SCRUB_WINDOW] = '\0';
            bool hit = strstr(err->message, window) != NULL;
            OPENSSL_cleanse(window, sizeof window);
            if (hit) {
                snprintf(err->message, sizeof err->message,
                         "(server message withheld: it quoted the credentials)");
                return;
            }
        }
    }
}

/* Overwrites every string of a parsed credentials/token document before it
 * is freed, since cJSON_Delete does not. */
static void json_wipe(cJSON *node)
{
    for (; node; node = node->next) {
        if (node->valuestring)
            OPENSSL_cleanse(node->valuestring, strlen(node->valuestring));
        json_wipe(node->child);
    }
}

static void json_free_wiped(cJSON *root)
{
    json_wipe(root);
    cJSON_Delete(root);
}

static const char *json_str(const cJSON *obj, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(item) && item->valuestring ? item->valuestring : NULL;
}

/* Copies an optional string field (NULL when absent or empty). */
static int json_opt(const cJSON *obj, const char *name, char **out, cerr_detail *err)
{
    const char *v = json_str(obj, name);
    *out = NULL;
    if (!v || !*v)
        return CERR_OK;
    *out = strdup(v);
    if (!*out) {
        set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
        return CERR_NOMEM;
    }
    return CERR_OK;
}

static int json_req(const cJSON *obj, const char *name, const char *path, char **out,
                    cerr_detail *err)
{
    int rc = json_opt(obj, name, out, err);
    if (rc == CERR_OK && !*out) {
        set_err(err, "INVALID_ARGUMENT", "credentials file %s has no \"%s\" string", path, name);
        log_error("auth: credentials file %s has no \"%s\" string", path, name);
        return CERR_INVALID;
    }
    return rc;
}

/* ---- base64url and JWT ---- */

static char *b64url_json(cJSON *obj)
{
    char *json = cJSON_PrintUnformatted(obj);
    if (!json)
        return NULL;
    char *enc = util_b64_encode(json, strlen(json), true);
    cJSON_free(json);
    return enc;
}

static int pem_no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1; /* encrypted keys are not supported; never prompt on a tty */
}

/* Parses a PEM RSA private key; NULL when unusable. */
static EVP_PKEY *load_rsa_key(const char *pem)
{
    if (!pem)
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    if (!bio)
        return NULL;
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, pem_no_password, NULL);
    BIO_free(bio);
    if (pkey && EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
    return pkey;
}

static char *jwt_header_claims(const char *iss, const char *kid, const char *scope, const char *aud,
                               int64_t iat, int64_t lifetime_s)
{
    cJSON *hdr = cJSON_CreateObject(), *cl = cJSON_CreateObject();
    char iat_s[24], exp_s[24];
    char *h64 = NULL, *c64 = NULL, *out = NULL;
    snprintf(iat_s, sizeof iat_s, "%lld", (long long)iat);
    snprintf(exp_s, sizeof exp_s, "%lld", (long long)(iat + lifetime_s));
    if (!hdr || !cl || !cJSON_AddStringToObject(hdr, "alg", "RS256") ||
        !cJSON_AddStringToObject(hdr, "typ", "JWT") ||
        (kid && *kid && !cJSON_AddStringToObject(hdr, "kid", kid)) ||
        !cJSON_AddStringToObject(cl, "iss", iss) ||
        (scope && !cJSON_AddStringToObject(cl, "scope", scope)) ||
        !cJSON_AddStringToObject(cl, "aud", aud) || !cJSON_AddRawToObject(cl, "iat", iat_s) ||
        !cJSON_AddRawToObject(cl, "exp", exp_s))
        goto done;
    h64 = b64url_json(hdr);
    c64 = b64url_json(cl);
    if (h64 && c64)
        out = util_asprintf("%s.%s", h64, c64);
done:
    cJSON_Delete(hdr);
    cJSON_Delete(cl);
    free(h64);
    free(c64);
    return out;
}

/* Signs "header.claims" with RS256 (RSASSA-PKCS1-v1_5, SHA-256). */
static char *jwt_sign(EVP_PKEY *pkey, const char *iss, const char *kid, const char *scope,
                      const char *aud, int64_t iat, int64_t lifetime_s)
{
    if (!pkey || !iss || !aud)
        return NULL;
    char *input = jwt_header_claims(iss, kid, scope, aud, iat, lifetime_s);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *sig = NULL;
    size_t siglen = 0;
    char *s64 = NULL, *out = NULL;
    if (!input || !md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey) != 1 ||
        EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)input, strlen(input)) != 1)
        goto done;
    sig = malloc(siglen);
    if (!sig || EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, strlen(input)) != 1)
        goto done;
    s64 = util_b64_encode(sig, siglen, true);
    if (s64)
        out = util_asprintf("%s.%s", input, s64);
done:
    EVP_MD_CTX_free(md);
    free(sig);
    free(s64);
    free(input);
    return out;
}

char *auth_jwt_assertion(const char *client_email, const char *private_key_pem,
                         const char *private_key_id, const char *scope, const char *audience,
                         int64_t iat, int64_t lifetime_s)
{
    EVP_PKEY *pkey = load_rsa_key(private_key_pem);
    if (!pkey)
        return NULL;
    char *jwt = jwt_sign(pkey, client_email, private_key_id, scope, audience, iat, lifetime_s);
    EVP_PKEY_free(pkey);
    return jwt;
}

/* ---- token endpoint responses ---- */

/* The class of a failed token request: refused when the endpoint answered
 * an error status, else unreachable (a deadline included). */
static int map_http_rc(int hrc, const cerr_detail *herr)
{
    if (hrc == CERR_NOMEM)
        return CERR_NOMEM;
    return herr->http_status >= 400 ? CERR_AUTH : CERR_NETWORK;
}

/* Rejects tokens that could break out of an HTTP header line. */
static bool token_chars_ok(const char *t)
{
    for (; *t; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t == 0x7f)
            return false;
    return true;
}

/* Parses {"access_token","expires_in","token_type"}. */
static int parse_token_response(const char *body, size_t len, const char *desc, char **token,
                                double *lifetime, cerr_detail *err)
{
    cJSON *root = body ? cJSON_ParseWithLength(body, len) : NULL;
    const char *tok = root ? json_str(root, "access_token") : NULL;
    const char *type = root ? json_str(root, "token_type") : NULL;
    const cJSON *exp = root ? cJSON_GetObjectItemCaseSensitive(root, "expires_in") : NULL;
    int rc = CERR_OK;
    *token = NULL;
    if (!tok || !*tok || !token_chars_ok(tok)) {
        set_err(err, "UNAUTHENTICATED", "token response from %s has no usable access_token", desc);
        rc = CERR_AUTH;
    } else if (type && strcasecmp(type, "Bearer") != 0) {
        set_err(err, "UNAUTHENTICATED",
                "token response from %s has token_type \"%.32s\", not Bearer", desc, type);
        rc = CERR_AUTH;
    } else {
        *lifetime = AUTH_DEFAULT_EXPIRES_S;
        if (cJSON_IsNumber(exp))
            *lifetime = exp->valuedouble > 0 ? exp->valuedouble : 0;
        else if (cJSON_IsString(exp) && exp->valuestring)
            *lifetime = strtod(exp->valuestring, NULL);
        *token = strdup(tok);
        if (!*token) {
            set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
            rc = CERR_NOMEM;
        }
    }
    json_free_wiped(root);
    return rc;
}

static void response_free_wiped(http_response *resp)
{
    if (resp->body)
        OPENSSL_cleanse(resp->body, resp->body_len);
    http_response_free(resp);
}

/* One request to token_uri, never with our own bearer token (there is none
 * yet). body NULL: none. herr gets the http layer's error as it came. */
static int token_request(auth_provider *p, const char *method, const char *const *headers,
                         const char *body, bool idempotent, long timeout_s, http_response *resp,
                         cerr_detail *herr)
{
    http_request req;
    http_request_init(&req);
    memset(resp, 0, sizeof *resp);
    memset(herr, 0, sizeof *herr);
    req.method = method;
    req.url = p->token_uri;
    req.headers = headers;
    if (body) {
        req.body = body;
        req.body_len = strlen(body);
    }
    req.idempotent = idempotent;
    req.no_auth = true;
    req.timeout_s = timeout_s;
    return http_perform(p->http, &req, resp, herr);
}

/* POSTs a form-encoded grant to token_uri and parses the token. */
static int post_grant(auth_provider *p, const char *form, const char *const *secrets,
                      size_t nsecrets, char **token, double *lifetime, cerr_detail *err)
{
    static const char *const headers[] = {"Content-Type: application/x-www-form-urlencoded",
                                          "Accept: application/json", NULL};
    http_response resp;
    cerr_detail herr;
    if (!http_url_safe_for_credentials(p->token_uri)) {
        set_err(err, "INVALID_ARGUMENT",
                "refusing to send credentials in clear text to token_uri %s: use https:// "
                "(plain http only to a loopback address)",
                p->token_uri);
        return CERR_AUTH;
    }
    /* A grant may be repeated safely. */
    int hrc = token_request(p, "POST", headers, form, true, AUTH_TOKEN_TIMEOUT_S, &resp, &herr);
    int rc;
    scrub_message(&herr, secrets, nsecrets);
    if (hrc != CERR_OK) {
        rc = map_http_rc(hrc, &herr);
        if (herr.http_status >= 500)
            rc = CERR_UNAVAILABLE;
        relay_err(err, &herr, "token request to %s failed: %.300s", p->token_uri, herr.message);
    } else if (resp.status != 200) {
        set_err(err, "UNAUTHENTICATED", "token request to %s answered HTTP %ld", p->token_uri,
                resp.status);
        if (err)
            err->http_status = resp.status;
        rc = CERR_AUTH;
    } else {
        rc = parse_token_response(resp.body, resp.body_len, p->token_uri, token, lifetime, err);
    }
    response_free_wiped(&resp);
    return rc;
}

static int fetch_service_account(auth_provider *p, char **token, double *lifetime, cerr_detail *err)
{
    char *jwt = jwt_sign(p->pkey, p->client_email, p->private_key_id, AUTH_SCOPE_CLOUD_PLATFORM,
                         p->token_uri, (int64_t)time(NULL), AUTH_JWT_LIFETIME_S);
    if (!jwt) {
        set_err(err, "INTERNAL", "cannot sign a JWT assertion with the key of %s", p->desc);
        return CERR_UNSUPPORTED;
    }
    char *esc = http_escape(jwt);
    char *form =
        esc ? util_asprintf("grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Ajwt-"
                            "bearer&assertion=%s",
                            esc)
            : NULL;
    int rc;
    if (!form) {
        set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
        rc = CERR_NOMEM;
    } else {
        const char *secrets[] = {jwt + strcspn(jwt, ".")}; /* claims and signature */
        rc = post_grant(p, form, secrets, 1, token, lifetime, err);
    }
    secret_free(form);
    secret_free(esc);
    secret_free(jwt);
    return rc;
}

static int fetch_authorized_user(auth_provider *p, char **token, double *lifetime, cerr_detail *err)
{
    char *rt = http_escape(p->refresh_token);
    char *id = http_escape(p->client_id);
    char *sec = http_escape(p->client_secret);
    char *form =
        rt && id && sec
            ? util_asprintf(
                  "grant_type=refresh_token&refresh_token=%s&client_id=%s&client_secret=%s", rt, id,
                  sec)
            : NULL;
    int rc;
    if (!form) {
        set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
        rc = CERR_NOMEM;
    } else {
        const char *secrets[] = {p->refresh_token, rt, p->client_secret, sec};
        rc = post_grant(p, form, secrets, 4, token, lifetime, err);
    }
    secret_free(form);
    secret_free(rt);
    secret_free(id);
    secret_free(sec);
    return rc;
}

/* GETs the metadata token URL. A response without "Metadata-Flavor: Google"
 * did not come from a metadata server and is refused. */
static int fetch_metadata(auth_provider *p, long timeout_s, bool retry, char **token,
                          double *lifetime, cerr_detail *err)
{
    static const char *const headers[] = {"Metadata-Flavor: Google", NULL};
    http_response resp;
    cerr_detail herr;
    char flavor[64] = "";
    int hrc = token_request(p, "GET", headers, NULL, retry, timeout_s, &resp, &herr);
    bool genuine = http_response_header(&resp, "Metadata-Flavor", flavor, sizeof flavor) &&
                   strcmp(flavor, "Google") == 0;
    int rc;
    if (hrc != CERR_OK && herr.http_status == 0) { /* no answer */
        rc = map_http_rc(hrc, &herr);
        relay_err(err, &herr, "metadata server at %s: %.300s", p->token_uri, herr.message);
    } else if (!genuine) {
        set_err(err, "UNAUTHENTICATED",
                "%s answered without \"Metadata-Flavor: Google\": not a metadata server",
                p->token_uri);
        rc = AUTH_NOT_METADATA;
    } else if (hrc != CERR_OK || resp.status != 200) {
        long st = hrc == CERR_OK ? resp.status : herr.http_status;
        relay_err(err, &herr, "metadata server at %s refused a token (HTTP %ld): %.300s",
                  p->token_uri, st, herr.message);
        if (err)
            err->http_status = st;
        rc = CERR_AUTH;
    } else {
        rc = parse_token_response(resp.body, resp.body_len, p->token_uri, token, lifetime, err);
    }
    response_free_wiped(&resp);
    return rc;
}

static int fetch_token(auth_provider *p, char **token, double *lifetime, cerr_detail *err)
{
    switch (p->kind) {
    case AUTH_KIND_SERVICE_ACCOUNT:
        return fetch_service_account(p, token, lifetime, err);
    case AUTH_KIND_AUTHORIZED_USER:
        return fetch_authorized_user(p, token, lifetime, err);
    case AUTH_KIND_METADATA: {
        int rc = fetch_metadata(p, AUTH_TOKEN_TIMEOUT_S, true, token, lifetime, err);
        return rc == AUTH_NOT_METADATA ? CERR_AUTH : rc;
    }
    default:
        set_err(err, "INTERNAL", "no credentials to fetch a token with");
        return CERR_NOT_FOUND;
    }
}

/* ---- token cache ---- */

/* Caller holds p->lock. Takes ownership of token. */
static void cache_install(auth_provider *p, char *token, double lifetime, double started)
{
    secret_free(p->token);
    p->token = token;
    p->lifetime_s = lifetime;
    p->expires_at = started + lifetime;
    p->refreshed_at = util_now_s();
}

/* Caller holds p->lock. */
static bool cache_usable(const auth_provider *p, double now, bool force)
{
    if (!p->token)
        return false;
    double remaining = p->expires_at - now;
    if (force)
        return now - p->refreshed_at < AUTH_FORCE_WINDOW_S && remaining > 0;
    double ahead = p->lifetime_s / 4;
    if (ahead > AUTH_REFRESH_AHEAD_S)
        ahead = AUTH_REFRESH_AHEAD_S;
    return remaining > ahead;
}

static int cache_copy(const auth_provider *p, char *buf, size_t buflen, cerr_detail *err)
{
    size_t len = strlen(p->token);
    if (len + 1 > buflen) {
        set_err(err, "INTERNAL", "access token (%zu bytes) does not fit a %zu-byte buffer", len,
                buflen);
        return CERR_NOMEM;
    }
    memcpy(buf, p->token, len + 1);
    return CERR_OK;
}

static auth_provider *provider_alloc(auth_kind kind);
static int load_credentials_file(auth_provider *p, const char *path, cerr_detail *err);

#define SWAP(a, b)                                                                                 \
    do {                                                                                           \
        __typeof__(a) t_ = (a);                                                                    \
        (a) = (b);                                                                                 \
        (b) = t_;                                                                                  \
    } while (0)

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_size == b->st_size;
}

/* Caller holds p->lock and is the refreshing thread (the only one that
 * reads the credentials). Reads the credentials file again when it
 * changed; unusable new content keeps the old credentials (logged). */
static void reload_if_changed(auth_provider *p)
{
    struct stat st;
    if (!p->path || stat(p->path, &st) != 0 || same_file(&st, &p->file_st))
        return;
    p->file_st = st;
    auth_provider *n = provider_alloc(AUTH_KIND_NONE);
    cerr_detail e;
    memset(&e, 0, sizeof e);
    if (!n || load_credentials_file(n, p->path, &e) != CERR_OK) {
        log_warn("auth: %s changed but cannot be used (%s): keeping the credentials read before",
                 p->path, n ? e.message : "out of memory");
        auth_provider_free(n);
        return;
    }
    SWAP(p->kind, n->kind);
    SWAP(p->desc, n->desc);
    SWAP(p->token_uri, n->token_uri);
    SWAP(p->client_email, n->client_email);
    SWAP(p->private_key_id, n->private_key_id);
    SWAP(p->pkey, n->pkey);
    SWAP(p->client_id, n->client_id);
    SWAP(p->client_secret, n->client_secret);
    SWAP(p->refresh_token, n->refresh_token);
    log_info("auth: %s changed: now using %s", p->path, p->desc);
    auth_provider_free(n);
}

/* Caller holds p->lock; it is released during the request. */
static void cache_refresh(auth_provider *p)
{
    reload_if_changed(p);
    char *token = NULL;
    double lifetime = 0;
    cerr_detail ferr;
    memset(&ferr, 0, sizeof ferr);
    p->refreshing = true;
    pthread_mutex_unlock(&p->lock);
    double started = util_now_s();
    int rc = fetch_token(p, &token, &lifetime, &ferr);
    pthread_mutex_lock(&p->lock);
    if (rc == CERR_OK) {
        cache_install(p, token, lifetime, started);
        log_debug("auth: new access token from %s, valid for %.0f s", p->desc, lifetime);
    } else {
        /* Refused or unusable credentials need a person (CERR_AUTH);
         * anything else passes by itself and keeps its class. */
        if (rc == CERR_AUTH || rc == CERR_UNSUPPORTED || rc == CERR_INVALID || rc == CERR_NOT_FOUND)
            rc = CERR_AUTH;
        ferr.cls = rc;
        log_warn("auth: token refresh for %s failed: %s", p->desc, ferr.message);
    }
    p->last_rc = rc;
    p->last_err = ferr;
    p->refreshing = false;
    p->generation++;
    pthread_cond_broadcast(&p->cond);
}

/* Waits (p->lock held) until the running refresh ends; a thread with a
 * deadline (a user's request) waits no longer than that: -1. */
static int wait_refresh(auth_provider *p, unsigned long entry_gen)
{
    while (p->generation == entry_gen) {
        double left = deadline_remaining_ms();
        if (left < 0) {
            pthread_cond_wait(&p->cond, &p->lock);
            continue;
        }
        if (left == 0)
            return -1;
        struct timespec ts = util_timespec_in(CLOCK_MONOTONIC, left / 1000.0);
        pthread_cond_timedwait(&p->cond, &p->lock, &ts);
    }
    return 0;
}

static int get_token(auth_provider *p, char *buf, size_t buflen, bool force_refresh,
                     cerr_detail *err);

int auth_get_token(void *provider, char *buf, size_t buflen, bool force_refresh, cerr_detail *err)
{
    int rc = get_token(provider, buf, buflen, force_refresh, err);
    if (err)
        err->cls = rc;
    return rc;
}

static int get_token(auth_provider *p, char *buf, size_t buflen, bool force_refresh,
                     cerr_detail *err)
{
    if (!p) {
        set_err(err, "UNAUTHENTICATED", "no credentials provider");
        return CERR_NOT_FOUND;
    }
    if (!buf || buflen == 0) {
        set_err(err, "INTERNAL", "no buffer for the access token");
        return CERR_NOMEM;
    }
    buf[0] = '\0';
    if (p->kind == AUTH_KIND_NONE)
        return CERR_OK;
    int rc;
    pthread_mutex_lock(&p->lock);
    unsigned long entry_gen = p->generation;
    for (;;) {
        double now = util_now_s();
        if (p->generation != entry_gen) {
            /* A refresh finished since we arrived: its result answers us. A
             * failed refresh-ahead still leaves the old token usable. */
            if (p->last_rc == CERR_OK || (!force_refresh && p->token && p->expires_at > now)) {
                rc = cache_copy(p, buf, buflen, err);
            } else {
                rc = p->last_rc;
                if (err)
                    *err = p->last_err;
            }
            break;
        }
        if (cache_usable(p, now, force_refresh)) {
            rc = cache_copy(p, buf, buflen, err);
            break;
        }
        if (p->refreshing) {
            if (wait_refresh(p, entry_gen) != 0) {
                set_err(err, "DEADLINE_EXCEEDED",
                        "no access token within the %g s timeout (another thread is still "
                        "fetching one from %s)",
                        deadline_length_s(), p->token_uri ? p->token_uri : p->desc);
                rc = CERR_TIMEOUT;
                break;
            }
            continue;
        }
        cache_refresh(p);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* ---- credentials files ---- */

static int read_file_secret(const char *path, char **out, size_t *len, cerr_detail *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not hang us */
    struct stat st;
    *out = NULL;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int e = errno;
        set_err(err, "PERMISSION_DENIED", "cannot read credentials file %s: %s", path, strerror(e));
        log_error("auth: cannot read credentials file %s: %s", path, strerror(e));
        if (fd >= 0)
            close(fd);
        return CERR_INVALID;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > AUTH_MAX_FILE_BYTES) {
        set_err(err, "INVALID_ARGUMENT", "credentials file %s is not a regular file under 1 MiB",
                path);
        log_error("auth: credentials file %s is not a regular file under 1 MiB", path);
        close(fd);
        return CERR_INVALID;
    }
    if (st.st_mode & 077)
        log_warn("auth: credentials file %s is accessible by group or others (mode %04o); "
                 "run: chmod 600 %s",
                 path, (unsigned)(st.st_mode & 07777), path);
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = buf ? util_pread_full(fd, buf, (size_t)st.st_size, 0) : 0;
    close(fd);
    if (!buf) {
        set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
        return CERR_NOMEM;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return CERR_OK;
}

/* The fields both key files may carry; token_uri defaults to Google's. */
static int load_token_uri_and_quota(auth_provider *p, const cJSON *root, cerr_detail *err)
{
    int rc = json_opt(root, "token_uri", &p->token_uri, err);
    if (rc == CERR_OK)
        rc = json_opt(root, "quota_project_id", &p->quota_project, err);
    if (rc == CERR_OK && !p->token_uri && !(p->token_uri = strdup(AUTH_DEFAULT_TOKEN_URI)))
        rc = CERR_NOMEM;
    return rc;
}

static int load_service_account(auth_provider *p, const cJSON *root, const char *path,
                                cerr_detail *err)
{
    char *pem = NULL;
    int rc = json_req(root, "client_email", path, &p->client_email, err);
    if (rc == CERR_OK)
        rc = json_req(root, "private_key", path, &pem, err);
    if (rc == CERR_OK)
        rc = json_opt(root, "private_key_id", &p->private_key_id, err);
    if (rc == CERR_OK)
        rc = load_token_uri_and_quota(p, root, err);
    if (rc == CERR_OK && !(p->pkey = load_rsa_key(pem))) {
        set_err(err, "INVALID_ARGUMENT", "private_key in %s is not an unencrypted PEM RSA key",
                path);
        log_error("auth: private_key in %s is not an unencrypted PEM RSA key", path);
        rc = CERR_UNSUPPORTED;
    }
    secret_free(pem);
    if (rc == CERR_OK) {
        p->kind = AUTH_KIND_SERVICE_ACCOUNT;
        p->desc = util_asprintf("service account %s from %s", p->client_email, path);
    }
    return rc;
}

static int load_authorized_user(auth_provider *p, const cJSON *root, const char *path,
                                cerr_detail *err)
{
    int rc = json_req(root, "client_id", path, &p->client_id, err);
    if (rc == CERR_OK)
        rc = json_req(root, "client_secret", path, &p->client_secret, err);
    if (rc == CERR_OK)
        rc = json_req(root, "refresh_token", path, &p->refresh_token, err);
    if (rc == CERR_OK)
        rc = load_token_uri_and_quota(p, root, err);
    if (rc == CERR_OK) {
        p->kind = AUTH_KIND_AUTHORIZED_USER;
        p->desc = util_asprintf("authorized user from %s", path);
    }
    return rc;
}

static int load_credentials_file(auth_provider *p, const char *path, cerr_detail *err)
{
    char *text = NULL;
    size_t len = 0;
    int rc = read_file_secret(path, &text, &len, err);
    if (rc != CERR_OK)
        return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    OPENSSL_cleanse(text, len);
    free(text);
    const char *type = root ? json_str(root, "type") : NULL;
    if (!cJSON_IsObject(root)) {
        set_err(err, "INVALID_ARGUMENT", "credentials file %s is not a JSON object", path);
        log_error("auth: credentials file %s is not a JSON object", path);
        rc = CERR_INVALID;
    } else if (!type) {
        set_err(err, "INVALID_ARGUMENT", "credentials file %s has no \"type\" string", path);
        log_error("auth: credentials file %s has no \"type\" string", path);
        rc = CERR_INVALID;
    } else if (strcmp(type, "service_account") == 0) {
        rc = load_service_account(p, root, path, err);
    } else if (strcmp(type, "authorized_user") == 0) {
        rc = load_authorized_user(p, root, path, err);
    } else {
        set_err(err, "INVALID_ARGUMENT",
                "credentials file %s has type \"%.40s\"; supported: service_account, "
                "authorized_user",
                path, type);
        log_error("auth: credentials file %s has unsupported type \"%.40s\"", path, type);
        rc = CERR_INVALID;
    }
    json_free_wiped(root);
    if (rc == CERR_OK && !p->desc) {
        set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
        rc = CERR_NOMEM;
    }
    if (rc == CERR_OK && !p->path) {
        p->path = strdup(path);
        if (stat(path, &p->file_st) != 0)
            memset(&p->file_st, 0, sizeof p->file_st);
    }
    return rc;
}

/* ---- metadata server ---- */

static int init_metadata(auth_provider *p, cerr_detail *err)
{
    const char *host = getenv("GCE_METADATA_HOST");
    bool explicit_host = host && *host;
    char *base = !explicit_host                ? strdup(AUTH_METADATA_DEFAULT_BASE)
                 : strstr(host, "://") != NULL ? strdup(host)
                                               : util_asprintf("http://%s", host);
    if (!base) {
        set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
        return CERR_NOMEM;
    }
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        base[--bl] = '\0';
    p->kind = AUTH_KIND_METADATA;
    p->token_uri = util_asprintf("%s%s", base, AUTH_METADATA_TOKEN_PATH);
    p->desc = util_asprintf("metadata server at %s", base);
    free(base);
    if (!p->token_uri || !p->desc) {
        set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
        return CERR_NOMEM;
    }
    /* The probe is the first token request: a genuine answer is cached. */
    char *token = NULL;
    double lifetime = 0, started = util_now_s();
    cerr_detail perr;
    memset(&perr, 0, sizeof perr);
    int rc = fetch_metadata(
        p, explicit_host ? AUTH_PROBE_EXPLICIT_TIMEOUT_S : AUTH_PROBE_DEFAULT_TIMEOUT_S, false,
        &token, &lifetime, &perr);
    if (rc == CERR_OK) {
        pthread_mutex_lock(&p->lock);
        cache_install(p, token, lifetime, started);
        pthread_mutex_unlock(&p->lock);
        return CERR_OK;
    }
    if (rc == CERR_NETWORK || rc == AUTH_NOT_METADATA) {
        set_err(err, "UNAUTHENTICATED",
                "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS or pass a key "
                "file, run 'gcloud auth application-default login', or run on Google Cloud "
                "(%.300s)",
                perr.message);
        log_error("auth: %s", err ? err->message : perr.message);
        return CERR_NOT_FOUND;
    }
    if (err)
        *err = perr;
    log_error("auth: %s", perr.message);
    return rc;
}

/* ---- provider lifecycle ---- */

static auth_provider *provider_alloc(auth_kind kind)
{
    auth_provider *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->kind = kind;
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* wait_refresh counts in it */
    pthread_cond_init(&p->cond, &ca);
    pthread_condattr_destroy(&ca);
    return p;
}

auth_provider *auth_provider_new_none(void)
{
    return provider_alloc(AUTH_KIND_NONE);
}

/* The gcloud ADC file, or NULL when it does not exist (fall through). */
static char *gcloud_adc_path(void)
{
    const char *cfg = getenv("CLOUDSDK_CONFIG");
    const char *home = getenv("HOME");
    char *path = NULL;
    if (cfg && *cfg)
        path = util_asprintf("%s/%s", cfg, AUTH_ADC_FILE);
    else if (home && *home)
        path = util_asprintf("%s/.config/gcloud/%s", home, AUTH_ADC_FILE);
    struct stat st;
    if (path && stat(path, &st) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
        free(path);
        path = NULL;
    }
    return path;
}

static int discover(auth_provider *p, const char *credentials_file, cerr_detail *err)
{
    if (credentials_file)
        return load_credentials_file(p, credentials_file, err);
    const char *env = getenv("GOOGLE_APPLICATION_CREDENTIALS");
    if (env && *env)
        return load_credentials_file(p, env, err);
    char *adc = gcloud_adc_path();
    if (adc) {
        int rc = load_credentials_file(p, adc, err);
        free(adc);
        return rc;
    }
    return init_metadata(p, err);
}

static int provider_new(const char *credentials_file, http_client *http, auth_provider **out,
                        char **where, cerr_detail *err);

int auth_provider_new(const char *credentials_file, http_client *http, auth_provider **out,
                      char **where, cerr_detail *err)
{
    int rc = provider_new(credentials_file, http, out, where, err);
    if (err)
        err->cls = rc;
    return rc;
}

static int provider_new(const char *credentials_file, http_client *http, auth_provider **out,
                        char **where, cerr_detail *err)
{
    if (where)
        *where = NULL;
    if (err)
        memset(err, 0, sizeof *err);
    if (!out)
        return CERR_NOMEM;
    *out = NULL;
    auth_provider *p = provider_alloc(AUTH_KIND_NONE);
    if (p && !http) {
        http_options opts;
        http_options_init(&opts);
        p->own_http = http = http_client_new(&opts);
    }
    if (!p || !http) {
        auth_provider_free(p);
        set_err(err, "RESOURCE_EXHAUSTED", "out of memory");
        return CERR_NOMEM;
    }
    p->http = http;
    int rc = discover(p, credentials_file, err);
    if (rc == CERR_OK && where && !(*where = strdup(p->desc)))
        rc = CERR_NOMEM;
    if (rc != CERR_OK) {
        auth_provider_free(p);
        return rc;
    }
    log_info("auth: using %s", p->desc);
    *out = p;
    return CERR_OK;
}

void auth_provider_free(auth_provider *p)
{
    if (!p)
        return;
    secret_free(p->token);
    secret_free(p->client_secret);
    secret_free(p->refresh_token);
    EVP_PKEY_free(p->pkey); /* OpenSSL clears private key material on free */
    free(p->client_id);
    free(p->client_email);
    free(p->private_key_id);
    free(p->quota_project);
    free(p->token_uri);
    free(p->desc);
    free(p->path);
    if (p->own_http)
        http_client_free(p->own_http);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p);
}

auth_kind auth_provider_kind(const auth_provider *p)
{
    return p ? p->kind : AUTH_KIND_NONE;
}

const char *auth_provider_quota_project(const auth_provider *p)
{
    return p ? p->quota_project : NULL;
}
