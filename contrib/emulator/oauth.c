/* oauth: the emulated OAuth2 token endpoint and metadata server.
 *
 * Owns service-account keys (generated with OpenSSL; only the public half is
 * kept, under DATA/oauth/keys), refresh tokens written for authorized_user
 * files, and the access tokens handed out. Tokens are stored as SHA-256
 * digests with their expiry (DATA/oauth/tokens) so a restart keeps them
 * valid, and are never logged.
 *
 *   POST /token, /oauth2/v4/token   JWT-bearer (RS256 checked) and refresh_token grants
 *   GET  /computeMetadata/v1/...    token, project-id, service account email
 *
 * A bearer token may also be a self-signed JWT (AIP-4111) made with a key
 * this emulator issued.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "emu_internal.h"
#include "log.h"
#include "util.h"

typedef struct sa_key {
    char kid[64];
    char *email;
    EVP_PKEY *pub;
} sa_key;

typedef struct token_rec {
    char digest[65];
    int64_t expiry; /* unix seconds */
} token_rec;

typedef struct refresh_rec {
    char *token, *client_id, *client_secret;
} refresh_rec;

struct emu_oauth {
    pthread_mutex_t mu;
    sa_key *keys;
    size_t nkeys;
    token_rec *tokens;
    size_t ntokens, captokens;
    refresh_rec *refresh;
    size_t nrefresh;
};

/* ---- small helpers ---- */

static void sha256_hex(const char *s, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(s, len, md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
    out[64] = '\0';
}

static const char *jstr(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void oauth_path(emu_ctx *ctx, const char *rel, char *out, size_t len)
{
    snprintf(out, len, "%s/oauth/%s", ctx->data_dir, rel);
}

/* ---- persistence ---- */

static int add_key(emu_oauth *o, const char *kid, const char *email, EVP_PKEY *pub)
{
    sa_key *n = realloc(o->keys, (o->nkeys + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    o->keys = n;
    snprintf(n[o->nkeys].kid, sizeof(n[o->nkeys].kid), "%s", kid);
    n[o->nkeys].email = strdup(email ? email : "");
    n[o->nkeys].pub = pub;
    o->nkeys++;
    return 0;
}

static void load_keys(emu_ctx *ctx, emu_oauth *o)
{
    char path[4200];
    oauth_path(ctx, "keys.json", path, sizeof(path));
    cJSON *arr = emu_read_json(path);
    cJSON *k;
    cJSON_ArrayForEach(k, arr)
    {
        const char *kid = jstr(k, "kid"), *pem = jstr(k, "publicKey");
        if (!kid || !pem)
            continue;
        BIO *bio = BIO_new_mem_buf(pem, -1);
        EVP_PKEY *pub = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        if (!pub || add_key(o, kid, jstr(k, "clientEmail"), pub) != 0)
            EVP_PKEY_free(pub);
    }
    cJSON_Delete(arr);
}

static char *pubkey_pem(EVP_PKEY *pub)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (bio && PEM_write_bio_PUBKEY(bio, pub) == 1) {
        char *p;
        long n = BIO_get_mem_data(bio, &p);
        out = strndup(p, (size_t)n);
    }
    BIO_free(bio);
    return out;
}

static int save_keys(emu_ctx *ctx, emu_oauth *o)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < o->nkeys; i++) {
        cJSON *k = cJSON_CreateObject();
        char *pem = pubkey_pem(o->keys[i].pub);
        cJSON_AddStringToObject(k, "kid", o->keys[i].kid);
        cJSON_AddStringToObject(k, "clientEmail", o->keys[i].email);
        cJSON_AddStringToObject(k, "publicKey", pem ? pem : "");
        free(pem);
        cJSON_AddItemToArray(arr, k);
    }
    char path[4200];
    oauth_path(ctx, "keys.json", path, sizeof(path));
    return emu_write_json(path, arr, true);
}

static void load_tokens(emu_ctx *ctx, emu_oauth *o)
{
    char path[4200];
    oauth_path(ctx, "tokens", path, sizeof(path));
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char digest[65];
    long long exp;
    int64_t now = time(NULL);
    while (fscanf(f, "%64s %lld", digest, &exp) == 2) {
        if (exp <= now)
            continue;
        if (o->ntokens == o->captokens) {
            size_t cap = o->captokens ? o->captokens * 2 : 64;
            token_rec *n = realloc(o->tokens, cap * sizeof(*n));
            if (!n)
                break;
            o->tokens = n;
            o->captokens = cap;
        }
        memcpy(o->tokens[o->ntokens].digest, digest, 65);
        o->tokens[o->ntokens].expiry = exp;
        o->ntokens++;
    }
    fclose(f);
}

/* Called with the lock held: drops expired tokens and rewrites the file. */
static void save_tokens(emu_ctx *ctx, emu_oauth *o)
{
    int64_t now = time(NULL);
    size_t j = 0;
    for (size_t i = 0; i < o->ntokens; i++)
        if (o->tokens[i].expiry > now)
            o->tokens[j++] = o->tokens[i];
    o->ntokens = j;
    size_t cap = o->ntokens * 88 + 1;
    char *text = malloc(cap);
    if (!text)
        return;
    size_t len = 0;
    text[0] = '\0';
    for (size_t i = 0; i < o->ntokens; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s %lld\n", o->tokens[i].digest,
                                (long long)o->tokens[i].expiry);
    char path[4200];
    oauth_path(ctx, "tokens", path, sizeof(path));
    if (util_write_atomic(path, text, strlen(text), 0600) != 0)
        log_warn("cannot persist tokens in %s", path);
    free(text);
}

static void load_refresh(emu_ctx *ctx, emu_oauth *o)
{
    char path[4200];
    oauth_path(ctx, "refresh.json", path, sizeof(path));
    cJSON *arr = emu_read_json(path);
    cJSON *r;
    cJSON_ArrayForEach(r, arr)
    {
        const char *t = jstr(r, "refreshToken"), *id = jstr(r, "clientId"),
                   *sec = jstr(r, "clientSecret");
        if (!t || !id || !sec)
            continue;
        refresh_rec *n = realloc(o->refresh, (o->nrefresh + 1) * sizeof(*n));
        if (!n)
            break;
        o->refresh = n;
        n[o->nrefresh].token = strdup(t);
        n[o->nrefresh].client_id = strdup(id);
        n[o->nrefresh].client_secret = strdup(sec);
        o->nrefresh++;
    }
    cJSON_Delete(arr);
}

static int save_refresh(emu_ctx *ctx, emu_oauth *o)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < o->nrefresh; i++) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "refreshToken", o->refresh[i].token);
        cJSON_AddStringToObject(r, "clientId", o->refresh[i].client_id);
        cJSON_AddStringToObject(r, "clientSecret", o->refresh[i].client_secret);
        cJSON_AddItemToArray(arr, r);
    }
    char path[4200];
    oauth_path(ctx, "refresh.json", path, sizeof(path));
    return emu_write_json(path, arr, true);
}

int emu_oauth_open(emu_ctx *ctx)
{
    char dir[4200];
    oauth_path(ctx, "", dir, sizeof(dir));
    int rc = util_mkdirs(dir, 0700);
    if (rc != 0) {
        log_error("cannot create %s: %s", dir, strerror(-rc));
        return rc;
    }
    emu_oauth *o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    pthread_mutex_init(&o->mu, NULL);
    load_keys(ctx, o);
    load_tokens(ctx, o);
    load_refresh(ctx, o);
    ctx->oauth = o;
    return 0;
}

void emu_oauth_close(emu_ctx *ctx)
{
    emu_oauth *o = ctx->oauth;
    if (!o)
        return;
    for (size_t i = 0; i < o->nkeys; i++) {
        EVP_PKEY_free(o->keys[i].pub);
        free(o->keys[i].email);
    }
    for (size_t i = 0; i < o->nrefresh; i++) {
        free(o->refresh[i].token);
        free(o->refresh[i].client_id);
        free(o->refresh[i].client_secret);
    }
    free(o->keys);
    free(o->tokens);
    free(o->refresh);
    pthread_mutex_destroy(&o->mu);
    free(o);
    ctx->oauth = NULL;
}

/* ---- credential files ---- */

static void sa_email(emu_ctx *ctx, char *out, size_t len)
{
    snprintf(out, len, "dicomfs-emulator@%s.iam.gserviceaccount.com", ctx->project);
}

int emu_oauth_write_credentials(emu_ctx *ctx, const char *file)
{
    emu_oauth *o = ctx->oauth;
    EVP_PKEY *key = EVP_RSA_gen(2048);
    if (!key) {
        log_error("RSA key generation failed");
        return -EIO;
    }
    BIO *bio = BIO_new(BIO_s_mem());
    char *priv = NULL;
    if (bio && PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) == 1) {
        char *p;
        long n = BIO_get_mem_data(bio, &p);
        priv = strndup(p, (size_t)n);
    }
    BIO_free(bio);
    char *pub_pem = pubkey_pem(key);
    BIO *pb = pub_pem ? BIO_new_mem_buf(pub_pem, -1) : NULL;
    EVP_PKEY *pub = pb ? PEM_read_bio_PUBKEY(pb, NULL, NULL, NULL) : NULL;
    BIO_free(pb);
    free(pub_pem);
    EVP_PKEY_free(key);
    if (!priv || !pub) {
        free(priv);
        EVP_PKEY_free(pub);
        return -EIO;
    }
    char kid[41], email[256], token_uri[160], client_id[32];
    emu_random_hex(kid, 20);
    sa_email(ctx, email, sizeof(email));
    snprintf(token_uri, sizeof(token_uri), "%s/token", ctx->base_url);
    /* A numeric id like Google's, derived from the random key id. */
    for (int i = 0; i < 21; i++)
        client_id[i] = (char)('0' + (i == 0 ? 1 : (kid[i] % 10)));
    client_id[21] = '\0';

    pthread_mutex_lock(&o->mu);
    int rc = add_key(o, kid, email, pub);
    if (rc == 0)
        rc = save_keys(ctx, o);
    else
        EVP_PKEY_free(pub);
    pthread_mutex_unlock(&o->mu);

    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "service_account");
    cJSON_AddStringToObject(j, "project_id", ctx->project);
    cJSON_AddStringToObject(j, "private_key_id", kid);
    cJSON_AddStringToObject(j, "private_key", priv);
    cJSON_AddStringToObject(j, "client_email", email);
    cJSON_AddStringToObject(j, "client_id", client_id);
    cJSON_AddStringToObject(j, "auth_uri", "https://accounts.google.com/o/oauth2/auth");
    cJSON_AddStringToObject(j, "token_uri", token_uri);
    cJSON_AddStringToObject(j, "auth_provider_x509_cert_url",
                            "https://www.googleapis.com/oauth2/v1/certs");
    cJSON_AddStringToObject(j, "universe_domain", "googleapis.com");
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    OPENSSL_cleanse(priv, strlen(priv));
    free(priv);
    if (rc == 0)
        rc = text ? util_write_atomic(file, text, strlen(text), 0600) : -ENOMEM;
    if (text)
        OPENSSL_cleanse(text, strlen(text));
    free(text);
    if (rc != 0)
        log_error("cannot write credentials %s: %s", file, strerror(-rc));
    return rc;
}

int emu_oauth_write_user_credentials(emu_ctx *ctx, const char *file)
{
    emu_oauth *o = ctx->oauth;
    char tok[65], id[33], secret[33], client_id[80], token_uri[160];
    emu_random_hex(tok, 32);
    emu_random_hex(id, 16);
    emu_random_hex(secret, 16);
    snprintf(client_id, sizeof(client_id), "%s.apps.googleusercontent.com", id);
    snprintf(token_uri, sizeof(token_uri), "%s/token", ctx->base_url);
    char refresh[80];
    snprintf(refresh, sizeof(refresh), "1//emu-%s", tok);

    pthread_mutex_lock(&o->mu);
    int rc = -ENOMEM;
    refresh_rec *n = realloc(o->refresh, (o->nrefresh + 1) * sizeof(*n));
    if (n) {
        o->refresh = n;
        n[o->nrefresh].token = strdup(refresh);
        n[o->nrefresh].client_id = strdup(client_id);
        n[o->nrefresh].client_secret = strdup(secret);
        o->nrefresh++;
        rc = save_refresh(ctx, o);
    }
    pthread_mutex_unlock(&o->mu);

    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "authorized_user");
    cJSON_AddStringToObject(j, "client_id", client_id);
    cJSON_AddStringToObject(j, "client_secret", secret);
    cJSON_AddStringToObject(j, "refresh_token", refresh);
    cJSON_AddStringToObject(j, "token_uri", token_uri);
    cJSON_AddStringToObject(j, "quota_project_id", ctx->project);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (rc == 0)
        rc = text ? util_write_atomic(file, text, strlen(text), 0600) : -ENOMEM;
    free(text);
    if (rc != 0)
        log_error("cannot write user credentials %s: %s", file, strerror(-rc));
    return rc;
}

/* ---- JWT ---- */

static cJSON *b64_json(const char *s, size_t len)
{
    unsigned char *buf = malloc(len + 1);
    if (!buf)
        return NULL;
    long n = util_b64_decode(s, len, buf, len);
    cJSON *j = n >= 0 ? cJSON_ParseWithLength((const char *)buf, (size_t)n) : NULL;
    free(buf);
    return j;
}

static bool verify_sig(EVP_PKEY *pub, const char *input, size_t inlen, const unsigned char *sig,
                       size_t siglen)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1 &&
              EVP_DigestVerify(md, sig, siglen, (const unsigned char *)input, inlen) == 1;
    EVP_MD_CTX_free(md);
    return ok;
}

/* Checks an RS256 JWT made with one of our keys. Returns NULL and sets why. */
static cJSON *jwt_verify(emu_ctx *ctx, const char *jwt, const char **why)
{
    const char *d1 = strchr(jwt, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.')) {
        *why = "Invalid JWT: not a JSON Web Token.";
        return NULL;
    }
    cJSON *hdr = b64_json(jwt, (size_t)(d1 - jwt));
    cJSON *claims = b64_json(d1 + 1, (size_t)(d2 - d1 - 1));
    size_t siglen_in = strlen(d2 + 1);
    unsigned char *sig = malloc(siglen_in + 1);
    long siglen = sig ? util_b64_decode(d2 + 1, siglen_in, sig, siglen_in) : -1;
    const char *alg = jstr(hdr, "alg"), *kid = jstr(hdr, "kid");
    bool ok = false;
    *why = "Invalid JWT Signature.";
    if (!hdr || !claims || siglen <= 0) {
        *why = "Invalid JWT: undecodable header, claims or signature.";
    } else if (!alg || strcmp(alg, "RS256") != 0) {
        *why = "Invalid JWT: only RS256 is accepted.";
    } else {
        emu_oauth *o = ctx->oauth;
        pthread_mutex_lock(&o->mu);
        for (size_t i = 0; i < o->nkeys && !ok; i++) {
            if (kid && strcmp(kid, o->keys[i].kid) != 0)
                continue;
            ok = verify_sig(o->keys[i].pub, jwt, (size_t)(d2 - jwt), sig, (size_t)siglen);
        }
        pthread_mutex_unlock(&o->mu);
    }
    free(sig);
    cJSON_Delete(hdr);
    if (!ok) {
        cJSON_Delete(claims);
        return NULL;
    }
    const cJSON *iat = cJSON_GetObjectItemCaseSensitive(claims, "iat");
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(claims, "exp");
    double now = (double)time(NULL);
    if (!cJSON_IsNumber(iat) || !cJSON_IsNumber(exp) || iat->valuedouble > now + 60 ||
        exp->valuedouble <= now || exp->valuedouble - iat->valuedouble > 3600) {
        *why = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
               "timeframe. Check your iat and exp values in the JWT claim.";
        cJSON_Delete(claims);
        return NULL;
    }
    return claims;
}

static bool aud_ok(emu_ctx *ctx, const char *aud)
{
    char mine[160], mine2[160];
    snprintf(mine, sizeof(mine), "%s/token", ctx->base_url);
    snprintf(mine2, sizeof(mine2), "%s/oauth2/v4/token", ctx->base_url);
    return aud && (strcmp(aud, mine) == 0 || strcmp(aud, mine2) == 0 ||
                   strcmp(aud, "https://oauth2.googleapis.com/token") == 0 ||
                   strcmp(aud, "https://www.googleapis.com/oauth2/v4/token") == 0);
}

/* ---- tokens ---- */

static void issue_token(emu_ctx *ctx, emu_response *w)
{
    emu_oauth *o = ctx->oauth;
    char raw[65], token[96], digest[65];
    emu_random_hex(raw, 32);
    snprintf(token, sizeof(token), "ya29.emu-%s", raw);
    sha256_hex(token, strlen(token), digest);
    pthread_mutex_lock(&o->mu);
    if (o->ntokens == o->captokens) {
        size_t cap = o->captokens ? o->captokens * 2 : 64;
        token_rec *n = realloc(o->tokens, cap * sizeof(*n));
        if (!n) {
            pthread_mutex_unlock(&o->mu);
            emu_resp_error(w, 500, "out of memory");
            return;
        }
        o->tokens = n;
        o->captokens = cap;
    }
    memcpy(o->tokens[o->ntokens].digest, digest, 65);
    o->tokens[o->ntokens].expiry = (int64_t)time(NULL) + ctx->token_ttl;
    o->ntokens++;
    save_tokens(ctx, o);
    pthread_mutex_unlock(&o->mu);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "access_token", token);
    cJSON_AddNumberToObject(j, "expires_in", ctx->token_ttl);
    cJSON_AddStringToObject(j, "token_type", "Bearer");
    emu_resp_json(w, 200, j);
    OPENSSL_cleanse(token, sizeof(token));
}

bool emu_oauth_check_bearer(emu_ctx *ctx, const char *authorization)
{
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return false;
    const char *t = authorization + 7;
    while (*t == ' ')
        t++;
    if (!*t)
        return false;
    if (strchr(t, '.') && strchr(strchr(t, '.') + 1, '.') && strncmp(t, "ya29.", 5) != 0) {
        /* Self-signed JWT: signature and lifetime are what matter. */
        const char *why;
        cJSON *claims = jwt_verify(ctx, t, &why);
        cJSON_Delete(claims);
        return claims != NULL;
    }
    char digest[65];
    sha256_hex(t, strlen(t), digest);
    emu_oauth *o = ctx->oauth;
    int64_t now = time(NULL);
    bool ok = false;
    pthread_mutex_lock(&o->mu);
    for (size_t i = 0; i < o->ntokens && !ok; i++)
        ok = o->tokens[i].expiry > now && strcmp(o->tokens[i].digest, digest) == 0;
    pthread_mutex_unlock(&o->mu);
    return ok;
}

/* ---- POST /token ---- */

static void grant_error(emu_response *w, int status, const char *error, const char *desc)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "error", error);
    cJSON_AddStringToObject(j, "error_description", desc);
    emu_resp_json(w, status, j);
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 32);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Finds key in an application/x-www-form-urlencoded body; malloc'ed value. */
static char *form_value(const char *body, size_t len, const char *key)
{
    size_t klen = strlen(key);
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *fe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(fe - p));
        if (eq && (size_t)(eq - p) == klen && memcmp(p, key, klen) == 0) {
            char *out = malloc((size_t)(fe - eq));
            size_t j = 0;
            for (const char *q = eq + 1; out && q < fe; q++) {
                if (*q == '+')
                    out[j++] = ' ';
                else if (*q == '%' && q + 2 < fe && hexv(q[1]) >= 0 && hexv(q[2]) >= 0) {
                    out[j++] = (char)(hexv(q[1]) * 16 + hexv(q[2]));
                    q += 2;
                } else
                    out[j++] = *q;
            }
            if (out)
                out[j] = '\0';
            return out;
        }
        p = fe + 1;
    }
    return NULL;
}

static void jwt_grant(emu_ctx *ctx, const char *body, size_t len, emu_response *w)
{
    char *assertion = form_value(body, len, "assertion");
    if (!assertion) {
        grant_error(w, 400, "invalid_request", "Missing required parameter: assertion");
        return;
    }
    const char *why = NULL;
    cJSON *claims = jwt_verify(ctx, assertion, &why);
    OPENSSL_cleanse(assertion, strlen(assertion));
    free(assertion);
    if (!claims) {
        grant_error(w, 400, "invalid_grant", why);
        return;
    }
    bool aud = aud_ok(ctx, jstr(claims, "aud"));
    bool iss = jstr(claims, "iss") != NULL;
    cJSON_Delete(claims);
    if (!iss)
        grant_error(w, 400, "invalid_grant", "Invalid JWT: missing iss claim.");
    else if (!aud)
        grant_error(w, 400, "invalid_grant",
                    "Invalid JWT: aud must be the token endpoint "
                    "(https://oauth2.googleapis.com/token).");
    else
        issue_token(ctx, w);
}

static void refresh_grant(emu_ctx *ctx, const char *body, size_t len, emu_response *w)
{
    char *tok = form_value(body, len, "refresh_token");
    char *id = form_value(body, len, "client_id");
    char *sec = form_value(body, len, "client_secret");
    emu_oauth *o = ctx->oauth;
    bool ok = false;
    pthread_mutex_lock(&o->mu);
    for (size_t i = 0; tok && i < o->nrefresh && !ok; i++)
        ok = strcmp(o->refresh[i].token, tok) == 0 &&
             (!id || strcmp(o->refresh[i].client_id, id) == 0) &&
             (!sec || strcmp(o->refresh[i].client_secret, sec) == 0);
    pthread_mutex_unlock(&o->mu);
    free(tok);
    free(id);
    free(sec);
    if (ok)
        issue_token(ctx, w);
    else
        grant_error(w, 400, "invalid_grant", "Bad Request");
}

/* True while /_emulator/token-refusal (or --refuse-tokens-for) is in
 * force; counts the refusal. */
static bool refusing(emu_ctx *ctx)
{
    long long until = atomic_load(&ctx->refuse_tokens_until_ms);
    if (until == 0)
        return false;
    if (emu_mono_ms() >= until)
        return false;
    atomic_fetch_add(&ctx->stats.token_refused, 1);
    return true;
}

void emu_oauth_token_handle(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    if (strcmp(emu_req_method(r), "POST") != 0) {
        grant_error(w, 405, "invalid_request", "The token endpoint takes POST.");
        emu_resp_header(w, "Allow", "POST");
        return;
    }
    size_t len = 0;
    const char *body = emu_req_body(r, &len);
    if (!body) {
        grant_error(w, 400, "invalid_request", "Request body too large.");
        return;
    }
    char *grant = form_value(body, len, "grant_type");
    bool known = grant && (strcmp(grant, "refresh_token") == 0 ||
                           strcmp(grant, "urn:ietf:params:oauth:grant-type:jwt-bearer") == 0);
    if (known && refusing(ctx))
        /* As after a revoked credential or with a clock far off. */
        grant_error(w, 400, "invalid_grant",
                    "Token has been expired or revoked (refused by dicomfs-emulator: "
                    "/_emulator/token-refusal).");
    else if (!grant)
        grant_error(w, 400, "invalid_request", "Missing required parameter: grant_type");
    else if (strcmp(grant, "urn:ietf:params:oauth:grant-type:jwt-bearer") == 0)
        jwt_grant(ctx, body, len, w);
    else if (strcmp(grant, "refresh_token") == 0)
        refresh_grant(ctx, body, len, w);
    else
        grant_error(w, 400, "unsupported_grant_type", "Invalid grant_type.");
    free(grant);
}

/* ---- metadata server ---- */

static void meta_text(emu_response *w, int status, const char *text)
{
    emu_resp_bytes(w, status, "application/text", text, strlen(text));
    emu_resp_header(w, "Metadata-Flavor", "Google");
}

void emu_oauth_metadata_handle(emu_ctx *ctx, const emu_request *r, emu_response *w)
{
    const char *flavor = emu_req_header(r, "Metadata-Flavor");
    const char *path = emu_req_path(r);
    if (!flavor || strcmp(flavor, "Google") != 0) {
        meta_text(w, 403, "Missing required header \"Metadata-Flavor\": \"Google\"\n");
        return;
    }
    if (strcmp(emu_req_method(r), "GET") != 0 && strcmp(emu_req_method(r), "HEAD") != 0) {
        meta_text(w, 405, "Method not allowed\n");
        return;
    }
    const char *p = path + strlen("/computeMetadata/v1");
    char email[256];
    sa_email(ctx, email, sizeof(email));
    if (strcmp(p, "/instance/service-accounts/default/token") == 0 && refusing(ctx)) {
        /* The metadata server answers in text, not the OAuth2 JSON. */
        meta_text(w, 500,
                  "Could not fetch URI /computeMetadata/v1/instance/service-accounts/default/"
                  "token: invalid_grant: token refused by dicomfs-emulator\n");
    } else if (strcmp(p, "/instance/service-accounts/default/token") == 0) {
        issue_token(ctx, w);
        emu_resp_header(w, "Metadata-Flavor", "Google");
    } else if (strcmp(p, "/project/project-id") == 0) {
        meta_text(w, 200, ctx->project);
    } else if (strcmp(p, "/instance/service-accounts/default/email") == 0) {
        meta_text(w, 200, email);
    } else if (strcmp(p, "/instance/service-accounts/default/") == 0 ||
               strcmp(p, "/instance/service-accounts/default") == 0) {
        const char *rec = emu_req_query(r, "recursive");
        if (rec && strcmp(rec, "true") == 0) {
            /* google-auth (Python) reads email and scopes this way. */
            cJSON *j = cJSON_CreateObject();
            cJSON *aliases = cJSON_AddArrayToObject(j, "aliases");
            cJSON_AddItemToArray(aliases, cJSON_CreateString("default"));
            cJSON_AddStringToObject(j, "email", email);
            cJSON *scopes = cJSON_AddArrayToObject(j, "scopes");
            cJSON_AddItemToArray(
                scopes, cJSON_CreateString("https://www.googleapis.com/auth/cloud-platform"));
            emu_resp_json(w, 200, j);
            emu_resp_header(w, "Metadata-Flavor", "Google");
        } else {
            meta_text(w, 200, "aliases\nemail\nidentity\nscopes\ntoken\n");
        }
    } else if (strcmp(p, "/instance/service-accounts/") == 0) {
        char list[320];
        snprintf(list, sizeof(list), "default/\n%s/\n", email);
        meta_text(w, 200, list);
    } else if (strcmp(p, "/instance/service-accounts/default/scopes") == 0) {
        meta_text(w, 200, "https://www.googleapis.com/auth/cloud-platform\n");
    } else if (strcmp(p, "/instance") == 0 || strcmp(p, "/instance/") == 0) {
        meta_text(w, 200, "id\nservice-accounts/\nzone\n");
    } else if (strcmp(p, "/instance/id") == 0) {
        meta_text(w, 200, "1234567890");
    } else if (strcmp(p, "/instance/zone") == 0) {
        meta_text(w, 200, "projects/1234567890/zones/us-central1-a");
    } else if (strcmp(p, "/") == 0 || *p == '\0') {
        meta_text(w, 200, "instance/\nproject/\n");
    } else {
        meta_text(w, 404, "Not Found\n");
    }
}
