/* auth: Google credentials and access tokens.
 *
 * Owns: Application Default Credentials discovery in Google's order
 * (GOOGLE_APPLICATION_CREDENTIALS, the gcloud ADC file under $CLOUDSDK_CONFIG or
 * ~/.config/gcloud, the metadata server at $GCE_METADATA_HOST or
 * metadata.google.internal), service_account keys (RS256 JWT-bearer grant
 * posted to the key's token_uri), authorized_user (refresh_token grant), the
 * token cache (refreshed ahead of expiry by one thread while others wait).
 * No token or key byte is ever logged.
 */
#ifndef DICOMFS_AUTH_H
#define DICOMFS_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"

typedef struct auth_provider auth_provider;

/* auth_provider_new returns CERR_OK or a class (error.h): CERR_NOT_FOUND
 * (no credentials anywhere), CERR_INVALID (a credentials file unreadable or
 * malformed), CERR_UNSUPPORTED (its private key unusable), CERR_AUTH (the
 * token endpoint refused: invalid_grant, 401, ...), CERR_NETWORK or
 * CERR_UNAVAILABLE (the token endpoint unreachable or failing), CERR_NOMEM.
 * auth_get_token returns CERR_AUTH for every refused or unusable credential
 * (a person must fix it), CERR_TIMEOUT when the thread's deadline passed,
 * else the class of what failed. */

#define AUTH_SCOPE_CLOUD_PLATFORM "https://www.googleapis.com/auth/cloud-platform"

typedef enum {
    AUTH_KIND_SERVICE_ACCOUNT,
    AUTH_KIND_AUTHORIZED_USER,
    AUTH_KIND_METADATA,
    AUTH_KIND_NONE, /* no Authorization header at all (emulator --no-auth) */
} auth_kind;

/* Creates a provider. credentials_file overrides ADC discovery when non-NULL.
 * http is used for token requests (created without a token_fn). The
 * description of what was found (e.g. "service account x@y from /path") goes
 * to *where (malloc'ed, may be NULL). */
int auth_provider_new(const char *credentials_file, http_client *http, auth_provider **out,
                      char **where, cerr_detail *err);
auth_provider *auth_provider_new_none(void);
void auth_provider_free(auth_provider *p);
auth_kind auth_provider_kind(const auth_provider *p);
/* quota_project_id of an authorized_user file (for X-Goog-User-Project), or NULL. */
const char *auth_provider_quota_project(const auth_provider *p);

/* http_token_fn-compatible: returns a valid cached token or fetches one.
 * The token is refreshed by one thread while others wait once less than
 * min(300 s, lifetime/4) remains; force_refresh (after a 401) refetches unless
 * another thread refreshed within the last second. A failed refresh-ahead
 * still returns the old token while it is valid. For AUTH_KIND_NONE it
 * writes an empty string and succeeds: the daemon passes token_fn = NULL for
 * that kind instead, so no empty Authorization header is ever sent. */
int auth_get_token(void *provider, char *buf, size_t buflen, bool force_refresh, cerr_detail *err);

/* Builds a signed RS256 JWT assertion for the JWT-bearer grant (exposed for tests).
 * Returns malloc'ed "header.claims.signature" or NULL. */
char *auth_jwt_assertion(const char *client_email, const char *private_key_pem,
                         const char *private_key_id, const char *scope, const char *audience,
                         int64_t iat, int64_t lifetime_s);

#endif
