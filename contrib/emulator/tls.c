/* tls: the emulator's https identity, made afresh at every start.
 *
 * A throwaway CA (P-256, 7 days) signs one server certificate for the
 * listening address, 127.0.0.1 and localhost. Only the CA certificate is
 * written (DIR/ca.pem) for clients to trust; the CA key is dropped once the
 * server certificate is signed, so nothing else can ever be signed with it,
 * and the server key lives in memory only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "emu_internal.h"
#include "log.h"
#include "util.h"

#define TLS_DAYS 7

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static int set_serial(X509 *cert)
{
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    raw[0] &= 0x7f; /* positive */
    BIGNUM *bn = BN_bin2bn(raw, sizeof(raw), NULL);
    int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);
    return ok ? 0 : -1;
}

/* A certificate for `pub` named CN=`cn`, signed by `sign_key` as `issuer`
 * (NULL: self-signed). `exts` is a NULL-ended list of nid/value pairs. */
static X509 *make_cert(const char *cn, EVP_PKEY *pub, X509 *issuer, EVP_PKEY *sign_key,
                       const int *nids, const char *const *values)
{
    X509 *x = X509_new();
    if (!x || !X509_set_version(x, 2) || set_serial(x) != 0 ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 86400L * TLS_DAYS) || !X509_set_pubkey(x, pub))
        goto fail;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                    (const unsigned char *)"dicomfs-emulator", -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                    0) ||
        !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name))
        goto fail;
    for (int i = 0; nids[i]; i++)
        if (add_ext(x, issuer ? issuer : x, nids[i], values[i]) != 0)
            goto fail;
    if (!X509_sign(x, sign_key, EVP_sha256()))
        goto fail;
    return x;
fail:
    X509_free(x);
    return NULL;
}

static char *bio_text(BIO *b)
{
    char *data;
    long len = BIO_get_mem_data(b, &data);
    return len > 0 ? strndup(data, (size_t)len) : NULL;
}

static int write_ca(emu_ctx *ctx, const char *dir, X509 *ca)
{
    int rc = util_mkdirs(dir, 0755);
    if (rc != 0) {
        fprintf(stderr, "dicomfs-emulator: cannot create --tls-dir %s: %s\n", dir, strerror(-rc));
        return -1;
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/ca.pem", dir);
    FILE *f = fopen(path, "w");
    if (!f || !PEM_write_X509(f, ca) || fclose(f) != 0) {
        fprintf(stderr, "dicomfs-emulator: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    /* The printed export line names it: absolute, whatever the cwd. */
    if (realpath(dir, ctx->tls_dir_real))
        ctx->tls_dir = ctx->tls_dir_real;
    return 0;
}

int emu_tls_make(emu_ctx *ctx, const char *dir)
{
    static const int ca_nids[] = {NID_basic_constraints, NID_key_usage, NID_subject_key_identifier,
                                  0};
    static const char *const ca_vals[] = {"critical,CA:TRUE,pathlen:0",
                                          "critical,keyCertSign,cRLSign", "hash"};
    static const int srv_nids[] = {NID_basic_constraints,
                                   NID_key_usage,
                                   NID_ext_key_usage,
                                   NID_subject_alt_name,
                                   NID_authority_key_identifier,
                                   0};
    char san[160];
    if (strcmp(ctx->host, "127.0.0.1") == 0)
        snprintf(san, sizeof(san), "IP:127.0.0.1,DNS:localhost");
    else
        snprintf(san, sizeof(san), "IP:%s,IP:127.0.0.1,DNS:localhost", ctx->host);
    const char *const srv_vals[] = {"critical,CA:FALSE", "critical,digitalSignature", "serverAuth",
                                    san, "keyid"};

    int rc = -1;
    X509 *ca = NULL, *srv = NULL;
    BIO *kb = NULL, *cb = NULL;
    EVP_PKEY *ca_key = EVP_EC_gen("P-256");
    EVP_PKEY *srv_key = EVP_EC_gen("P-256");
    if (!ca_key || !srv_key)
        goto out;
    ca = make_cert("dicomfs-emulator throwaway CA", ca_key, NULL, ca_key, ca_nids, ca_vals);
    srv = ca ? make_cert(ctx->host, srv_key, ca, ca_key, srv_nids, srv_vals) : NULL;
    kb = BIO_new(BIO_s_mem());
    cb = BIO_new(BIO_s_mem());
    if (!srv || !kb || !cb || !PEM_write_bio_PrivateKey(kb, srv_key, NULL, NULL, 0, NULL, NULL) ||
        !PEM_write_bio_X509(cb, srv))
        goto out;
    ctx->tls_key = bio_text(kb);
    ctx->tls_cert = bio_text(cb);
    if (!ctx->tls_key || !ctx->tls_cert || write_ca(ctx, dir, ca) != 0)
        goto out;
    rc = 0;
out:
    if (rc != 0)
        log_error("cannot make the TLS certificates for --tls-dir %s", dir);
    BIO_free(kb);
    BIO_free(cb);
    X509_free(ca);
    X509_free(srv);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(srv_key);
    return rc;
}
