/*
 * sign.h - Standard Webhooks signatures over the exact bytes we send.
 *
 * v1:  HMAC-SHA256(key, msg_id "." timestamp "." body), key = base64-decode(secret
 *      without "whsec_"); header value "v1,<base64>".
 * v1a: ed25519 over the same content; signing secret "whsk_" + base64(64 bytes:
 *      32-byte seed then 32-byte public key), public key "whpk_" + base64(32 bytes);
 *      header value "v1a,<base64 signature>".
 *
 * Pure functions, thread-safe, no allocation unless the name says so; except struct
 * sign_cache, which keeps prepared keys for one thread.
 */
#ifndef HOOKRELAY_SIGN_H
#define HOOKRELAY_SIGN_H

#include <stddef.h>
#include <stdint.h>

#define SIGN_SECRET_MAX 128  /* bytes for any secret or public key text, NUL included */
#define SIGN_ONE_MAX 128     /* bytes for one "v1,..." / "v1a,..." value, NUL included */

/* Writes one signature value for `secret` ("whsec_..." -> v1, "whsk_..." -> v1a) into
 * out. Returns 0, or -1 if the secret is malformed or out is too small. */
int sign_one(const char *secret, const char *msg_id, int64_t timestamp,
             const unsigned char *body, size_t body_len, char *out, size_t out_size);

/* The whole webhook-signature header value for a space-separated list of secrets:
 * one signature per secret, space-separated, in the given order. Returns a malloc'd
 * string the caller frees, or NULL if any secret is malformed. */
char *sign_header_value(const char *secrets, const char *msg_id, int64_t timestamp,
                        const unsigned char *body, size_t body_len);

/* Prepared keys for one thread that signs many messages with few secrets texts (the
 * dispatcher): parsing a secret and keying OpenSSL with it costs more than signing a
 * message, so that is done once per secrets text, not once per delivery. It keeps up to
 * 1,024 texts; a text whose slot another takes is prepared again when next used. */
struct sign_cache;

/* NULL if out of memory, or if the OpenSSL library is older than 3.0.3. */
struct sign_cache *sign_cache_new(void);
void sign_cache_free(struct sign_cache *c);

/* As sign_header_value, with the keys for `secrets` prepared once and kept in c. */
char *sign_cache_header_value(struct sign_cache *c, const char *secrets, const char *msg_id,
                              int64_t timestamp, const unsigned char *body, size_t body_len);

/* Checks a secret the user supplied: "whsec_" + standard base64 of 24..64 bytes.
 * Returns 0, or -1 with *why set to a literal reason. */
int sign_secret_check(const char *secret, const char **why);

/* 1 if a and b are the same key however their base64 is spelled (unused low bits
 * differ), 0 if not or if either is malformed. Compares in constant time. */
int sign_secret_same(const char *a, const char *b);

/* Generates a fresh "whsec_" secret of 32 random bytes (OpenSSL RAND_bytes) into out
 * (SIGN_SECRET_MAX bytes). Returns 0 or -1. */
int sign_secret_generate(char *out, size_t out_size);

/* Generates an ed25519 pair: *secret_out "whsk_...", *public_out "whpk_..." (each
 * SIGN_SECRET_MAX bytes). Returns 0 or -1. */
int sign_keypair_generate(char *secret_out, char *public_out);

/* Derives "whpk_..." from a "whsk_..." secret. Returns 0 or -1 if malformed. */
int sign_public_key(const char *secret, char *public_out, size_t out_size);

/* Verifies a webhook-signature header value (space-separated "v1,..." entries) for the
 * given v1 secret: returns 0 if any entry matches (constant-time compare), -1 if none. */
int sign_verify(const char *secret, const char *msg_id, int64_t timestamp,
                const unsigned char *body, size_t body_len, const char *header_value);

/* As sign_verify, with these bytes as the HMAC key as they are, of any length (not a
 * secret's decoded base64): for telling which mistaken key a sender used. */
int sign_verify_hmac_key(const void *key, size_t key_len, const char *msg_id, int64_t timestamp,
                         const unsigned char *body, size_t body_len, const char *header_value);

/* Verifies the "v1a,..." entries of a webhook-signature header value with an ed25519
 * public key "whpk_...": returns the 1-based number of the first entry that verifies,
 * 0 if none does, -1 if the key is malformed. *entries gets the number of v1a entries. */
int sign_verify_v1a(const char *public_key, const char *msg_id, int64_t timestamp,
                    const unsigned char *body, size_t body_len, const char *header_value,
                    int *entries);

#endif
