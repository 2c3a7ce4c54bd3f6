/*
 * sign.c - Standard Webhooks signatures (v1 HMAC-SHA256, v1a ed25519) and secret
 * handling, on OpenSSL libcrypto.
 *
 * Owns: base64 with strict validation, parsing "whsec_" / "whsk_" secrets into raw keys,
 * preparing them for OpenSSL (struct prepared), the signed content
 * "msg_id.timestamp.body", the header value, and the per-thread cache of prepared keys.
 *
 * Invariants:
 * - Raw key bytes parsed from a secret live only on the stack and are wiped with
 *   OPENSSL_cleanse before return. A prepared key holds its key inside OpenSSL objects
 *   (an HMAC context, an ed25519 EVP_PKEY), which wipe it when freed. A cache keeps, on
 *   the heap, the secrets texts it holds keys for (rotated-out ones too, until their slot
 *   is taken or the cache freed); each is wiped when its slot gives way.
 * - A v1 context is restarted per message with EVP_MAC_init(ctx, NULL, 0, NULL), which
 *   keeps its key from OpenSSL 3.0.3 on (3.0.0-3.0.2 ignored the call: openssl#17811);
 *   older headers do not compile and an older library gets no cache.
 * - v1 streams the content into the HMAC; v1a cannot stream, so it signs the content
 *   built once in one malloc'd buffer, freed before return.
 * - A "whsk_" secret is exactly 64 bytes, seed then public key; the public half must be
 *   the one the seed derives, else the secret is malformed (we would publish a wrong whpk_).
 * - A cache slot holds either nothing or every key of its secrets text, prepared; a
 *   secrets text with any malformed secret is never cached.
 * - sign_verify re-signs with the given secret and compares whole values in constant
 *   time; ed25519 is deterministic, so this also works for a "whsk_" secret.
 *
 * Threads: the functions without a cache keep no state and are safe from any thread; a
 * struct sign_cache belongs to one thread at a time.
 */
#include "sign.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>

#include "hash.h"

#if OPENSSL_VERSION_NUMBER < 0x30000030L
#error "OpenSSL 3.0.3 or newer is needed (EVP_MAC_init with a NULL key restarts the HMAC)"
#endif

#define V1_PREFIX "whsec_"
#define V1A_PREFIX "whsk_"
#define PK_PREFIX "whpk_"
#define V1_KEY_MIN 24  /* bytes */
#define V1_KEY_MAX 64  /* bytes */
#define V1_KEY_GEN 32  /* bytes in a generated secret */
#define ED_SEED_LEN 32 /* bytes */
#define ED_PUB_LEN 32  /* bytes */
#define ED_SIG_LEN 64  /* bytes */
#define KEY_BUF_MAX 64 /* bytes: the largest raw key we keep */

#define SIGN_CACHE_SLOTS 1024 /* secrets texts kept prepared (a power of two) */

enum key_kind { KEY_V1, KEY_V1A };

struct key {
	enum key_kind kind;
	unsigned char raw[KEY_BUF_MAX]; /* v1: HMAC key; v1a: seed then public key */
	size_t len;                     /* bytes used in raw */
};

static int b64_char_ok(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

/* Checks `in` is standard, padded base64 (no whitespace, '=' only as the last one or two
 * characters) and gives the number of bytes it decodes to. Returns 0 or -1. */
static int b64_decoded_len(const char *in, size_t in_len, size_t *out_len)
{
	size_t pad = 0;
	size_t i;
	int rc = -1;

	if (in_len == 0 || in_len % 4 != 0)
		goto out;
	if (in[in_len - 1] == '=')
		pad++;
	if (in[in_len - 2] == '=')
		pad++;
	for (i = 0; i < in_len - pad; i++) {
		if (!b64_char_ok((unsigned char)in[i]))
			goto out;
	}
	*out_len = in_len / 4 * 3 - pad;
	rc = 0;
out:
	return rc;
}

/* Decodes strict base64 into out (out_cap bytes). EVP_DecodeBlock writes whole 3-byte
 * groups and counts the padding as output, so the true length comes from the text. */
static int b64_decode(const char *in, size_t in_len, unsigned char *out, size_t out_cap,
                      size_t *out_len)
{
	unsigned char tmp[KEY_BUF_MAX + 3];
	size_t len;
	int rc = -1;

	if (b64_decoded_len(in, in_len, &len) != 0)
		goto out;
	if (len > out_cap || in_len / 4 * 3 > sizeof(tmp))
		goto out;
	if (EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)in_len) < 0)
		goto out;
	memcpy(out, tmp, len);
	*out_len = len;
	rc = 0;
out:
	OPENSSL_cleanse(tmp, sizeof(tmp));
	return rc;
}

/* Writes prefix + base64(in) + NUL into out. Returns 0, or -1 if out is too small. */
static int b64_encode_prefixed(const char *prefix, const unsigned char *in, size_t in_len,
                               char *out, size_t out_size)
{
	size_t plen = strlen(prefix);
	size_t elen = (in_len + 2) / 3 * 4;
	int rc = -1;

	if (out == NULL || in_len > 1024 || out_size < plen + elen + 1)
		goto out;
	memcpy(out, prefix, plen);
	EVP_EncodeBlock((unsigned char *)out + plen, in, (int)in_len);
	out[plen + elen] = '\0';
	rc = 0;
out:
	return rc;
}

static int has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Derives the raw ed25519 public key from a 32-byte seed. */
static int ed_public_from_seed(const unsigned char *seed, unsigned char *pub)
{
	EVP_PKEY *pkey = NULL;
	size_t len = ED_PUB_LEN;
	int rc = -1;

	pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, ED_SEED_LEN);
	if (pkey == NULL)
		goto out;
	if (EVP_PKEY_get_raw_public_key(pkey, pub, &len) != 1 || len != ED_PUB_LEN)
		goto out;
	rc = 0;
out:
	EVP_PKEY_free(pkey);
	return rc;
}

/* Parses "whsec_<base64 24..64 bytes>" or "whsk_<base64 seed+public>" into k.
 * On failure sets *why (when why is not NULL) and leaves k wiped. */
static int key_parse(const char *secret, struct key *k, const char **why)
{
	const char *b64;
	const char *reason = "secret must start with whsec_";
	unsigned char pub[ED_PUB_LEN];
	size_t len;
	int rc = -1;

	memset(k, 0, sizeof(*k));
	if (secret == NULL)
		goto out;
	if (has_prefix(secret, V1_PREFIX)) {
		k->kind = KEY_V1;
		b64 = secret + strlen(V1_PREFIX);
	} else if (has_prefix(secret, V1A_PREFIX)) {
		k->kind = KEY_V1A;
		b64 = secret + strlen(V1A_PREFIX);
	} else {
		goto out;
	}
	reason = "secret is not valid base64";
	if (b64_decoded_len(b64, strlen(b64), &len) != 0)
		goto out;
	if (k->kind == KEY_V1) {
		reason = "secret must decode to 24-64 bytes";
		if (len < V1_KEY_MIN || len > V1_KEY_MAX)
			goto out;
	} else {
		reason = "ed25519 secret must decode to 64 bytes";
		if (len != ED_SEED_LEN + ED_PUB_LEN)
			goto out;
	}
	reason = "secret is not valid base64";
	if (b64_decode(b64, strlen(b64), k->raw, sizeof(k->raw), &k->len) != 0)
		goto out;
	if (k->kind == KEY_V1A) {
		reason = "ed25519 secret has a public key that does not match its seed";
		if (ed_public_from_seed(k->raw, pub) != 0)
			goto out;
		if (CRYPTO_memcmp(pub, k->raw + ED_SEED_LEN, ED_PUB_LEN) != 0)
			goto out;
	}
	rc = 0;
out:
	if (rc != 0) {
		OPENSSL_cleanse(k, sizeof(*k));
		if (why != NULL)
			*why = reason;
	}
	return rc;
}

/* Builds the malloc'd signed content "msg_id.timestamp.body" (no NUL). */
static unsigned char *content_new(const char *msg_id, int64_t timestamp, const unsigned char *body,
                                  size_t body_len, size_t *len_out)
{
	char ts[24];
	size_t id_len;
	size_t ts_len;
	size_t total;
	unsigned char *buf = NULL;
	int n;

	if (msg_id == NULL || (body == NULL && body_len != 0))
		goto out;
	n = snprintf(ts, sizeof(ts), "%" PRId64, timestamp);
	if (n < 0 || (size_t)n >= sizeof(ts))
		goto out;
	ts_len = (size_t)n;
	id_len = strlen(msg_id);
	if (id_len > SIZE_MAX / 2 || body_len > SIZE_MAX / 2 - id_len - ts_len - 2)
		goto out;
	total = id_len + 1 + ts_len + 1 + body_len;
	buf = malloc(total);
	if (buf == NULL)
		goto out;
	memcpy(buf, msg_id, id_len);
	buf[id_len] = '.';
	memcpy(buf + id_len + 1, ts, ts_len);
	buf[id_len + 1 + ts_len] = '.';
	if (body_len != 0)
		memcpy(buf + id_len + ts_len + 2, body, body_len);
	*len_out = total;
out:
	return buf;
}

/* A key ready to sign with: v1 an HMAC context keyed once (restarted for each
 * message, which keeps the key), v1a the ed25519 private key. */
struct prepared {
	enum key_kind kind;
	EVP_MAC_CTX *hmac; /* v1 */
	EVP_PKEY *ed;      /* v1a */
};

static void prepared_clear(struct prepared *p)
{
	EVP_MAC_CTX_free(p->hmac);
	EVP_PKEY_free(p->ed);
	memset(p, 0, sizeof(*p));
}

/* Prepares a v1 (HMAC-SHA256) key of these bytes, of any length. Returns 0, or -1 with
 * p cleared. */
static int prepared_init_hmac(struct prepared *p, const unsigned char *raw, size_t len)
{
	EVP_MAC *mac = NULL;
	char digest[] = "SHA256";
	OSSL_PARAM params[2];
	int rc = -1;

	memset(p, 0, sizeof(*p));
	p->kind = KEY_V1;
	mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	if (mac == NULL)
		goto out;
	p->hmac = EVP_MAC_CTX_new(mac);
	if (p->hmac == NULL)
		goto out;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
	params[1] = OSSL_PARAM_construct_end();
	if (EVP_MAC_init(p->hmac, raw, len, params) != 1)
		goto out;
	rc = 0;
out:
	EVP_MAC_free(mac); /* the context keeps its own reference */
	if (rc != 0)
		prepared_clear(p);
	return rc;
}

/* Prepares parsed key k. Returns 0, or -1 with p cleared. */
static int prepared_init(struct prepared *p, const struct key *k)
{
	if (k->kind == KEY_V1)
		return prepared_init_hmac(p, k->raw, k->len);
	memset(p, 0, sizeof(*p));
	p->kind = KEY_V1A;
	p->ed = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, k->raw, ED_SEED_LEN);
	return p->ed != NULL ? 0 : -1;
}

static int sign_ed25519(EVP_PKEY *pkey, const unsigned char *msg, size_t msg_len,
                        unsigned char *sig)
{
	EVP_MD_CTX *ctx = NULL;
	size_t sig_len = ED_SIG_LEN;
	int rc = -1;

	ctx = EVP_MD_CTX_new();
	if (ctx == NULL)
		goto out;
	if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, pkey) != 1)
		goto out;
	if (EVP_DigestSign(ctx, sig, &sig_len, msg, msg_len) != 1 || sig_len != ED_SIG_LEN)
		goto out;
	rc = 0;
out:
	EVP_MD_CTX_free(ctx);
	return rc;
}

/* Signs "msg_id.timestamp.body" with p: "v1,<b64>" or "v1a,<b64>" into out. */
static int prepared_sign(struct prepared *p, const char *msg_id, int64_t timestamp,
                         const unsigned char *body, size_t body_len, char *out, size_t out_size)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	size_t mac_len = 0;
	unsigned char sig[ED_SIG_LEN];
	unsigned char *msg = NULL;
	size_t msg_len = 0;
	char ts[24];
	int n;
	int rc = -1;

	if (msg_id == NULL || (body == NULL && body_len != 0))
		goto out;
	if (p->kind == KEY_V1) {
		n = snprintf(ts, sizeof(ts), "%" PRId64, timestamp);
		if (n < 0 || (size_t)n >= sizeof(ts))
			goto out;
		if (EVP_MAC_init(p->hmac, NULL, 0, NULL) != 1 ||
		    EVP_MAC_update(p->hmac, (const unsigned char *)msg_id, strlen(msg_id)) != 1 ||
		    EVP_MAC_update(p->hmac, (const unsigned char *)".", 1) != 1 ||
		    EVP_MAC_update(p->hmac, (const unsigned char *)ts, (size_t)n) != 1 ||
		    EVP_MAC_update(p->hmac, (const unsigned char *)".", 1) != 1 ||
		    (body_len != 0 && EVP_MAC_update(p->hmac, body, body_len) != 1) ||
		    EVP_MAC_final(p->hmac, mac, &mac_len, sizeof(mac)) != 1)
			goto out;
		rc = b64_encode_prefixed("v1,", mac, mac_len, out, out_size);
	} else {
		msg = content_new(msg_id, timestamp, body, body_len, &msg_len);
		if (msg == NULL || sign_ed25519(p->ed, msg, msg_len, sig) != 0)
			goto out;
		rc = b64_encode_prefixed("v1a,", sig, sizeof(sig), out, out_size);
	}
out:
	OPENSSL_cleanse(mac, sizeof(mac));
	free(msg);
	return rc;
}

/* Parses and prepares one secret. Returns 0, or -1 if it is malformed. */
static int prepared_from_secret(struct prepared *p, const char *secret)
{
	struct key k;
	int rc = -1;

	memset(p, 0, sizeof(*p));
	if (key_parse(secret, &k, NULL) == 0)
		rc = prepared_init(p, &k);
	OPENSSL_cleanse(&k, sizeof(k));
	return rc;
}

int sign_one(const char *secret, const char *msg_id, int64_t timestamp, const unsigned char *body,
             size_t body_len, char *out, size_t out_size)
{
	struct prepared p;
	int rc = -1;

	if (prepared_from_secret(&p, secret) != 0)
		goto out;
	rc = prepared_sign(&p, msg_id, timestamp, body, body_len, out, out_size);
out:
	prepared_clear(&p);
	return rc;
}

/* Next space-separated token of s starting at *pos: sets *start and *len, advances *pos.
 * Returns 0, or -1 at the end. */
static int next_token(const char *s, size_t *pos, const char **start, size_t *len)
{
	size_t i = *pos;
	size_t j;

	while (s[i] == ' ')
		i++;
	j = i;
	while (s[j] != ' ' && s[j] != '\0')
		j++;
	*start = s + i;
	*len = j - i;
	*pos = j;
	return j > i ? 0 : -1;
}

/* Every key of one space-separated secrets text, prepared. */
struct keyring {
	char *secrets;         /* the text it was made from (malloc'd), or NULL if empty */
	size_t count;          /* keys in keys[] */
	struct prepared *keys; /* malloc'd */
};

static void keyring_clear(struct keyring *r)
{
	for (size_t i = 0; i < r->count; i++)
		prepared_clear(&r->keys[i]);
	free(r->keys);
	if (r->secrets != NULL) {
		OPENSSL_cleanse(r->secrets, strlen(r->secrets));
		free(r->secrets);
	}
	memset(r, 0, sizeof(*r));
}

/* Fills empty r from secrets. Returns 0, or -1 (r left empty) if the list is empty, a
 * secret is malformed, or memory runs out. */
static int keyring_fill(struct keyring *r, const char *secrets)
{
	char secret[SIGN_SECRET_MAX];
	size_t pos = 0, count = 0, tok_len;
	const char *tok;
	int rc = -1;

	if (secrets == NULL)
		goto out;
	while (next_token(secrets, &pos, &tok, &tok_len) == 0)
		count++;
	if (count == 0)
		goto out;
	r->keys = calloc(count, sizeof(*r->keys));
	r->secrets = strdup(secrets);
	if (r->keys == NULL || r->secrets == NULL)
		goto out;
	pos = 0;
	while (next_token(secrets, &pos, &tok, &tok_len) == 0) {
		if (tok_len >= sizeof(secret))
			goto out;
		memcpy(secret, tok, tok_len);
		secret[tok_len] = '\0';
		if (prepared_from_secret(&r->keys[r->count], secret) != 0)
			goto out;
		r->count++;
	}
	rc = 0;
out:
	OPENSSL_cleanse(secret, sizeof(secret));
	if (rc != 0)
		keyring_clear(r);
	return rc;
}

/* The header value: one signature per key of r, space-separated, malloc'd. */
static char *keyring_header_value(struct keyring *r, const char *msg_id, int64_t timestamp,
                                  const unsigned char *body, size_t body_len)
{
	char one[SIGN_ONE_MAX];
	size_t cap = r->count * SIGN_ONE_MAX; /* count <= strlen(secrets): no overflow */
	size_t used = 0, one_len;
	char *value = malloc(cap);
	char *result = NULL;

	if (value == NULL)
		goto out;
	for (size_t i = 0; i < r->count; i++) {
		if (prepared_sign(&r->keys[i], msg_id, timestamp, body, body_len, one,
		                  sizeof(one)) != 0)
			goto out;
		one_len = strlen(one);
		if (used + 1 + one_len + 1 > cap)
			goto out;
		if (used != 0)
			value[used++] = ' ';
		memcpy(value + used, one, one_len + 1);
		used += one_len;
	}
	result = value;
	value = NULL;
out:
	free(value);
	return result;
}

char *sign_header_value(const char *secrets, const char *msg_id, int64_t timestamp,
                        const unsigned char *body, size_t body_len)
{
	struct keyring r = {0};
	char *value = NULL;

	if (keyring_fill(&r, secrets) == 0)
		value = keyring_header_value(&r, msg_id, timestamp, body, body_len);
	keyring_clear(&r);
	return value;
}

struct sign_cache {
	struct keyring slot[SIGN_CACHE_SLOTS]; /* by hash of the secrets text; one each */
};

struct sign_cache *sign_cache_new(void)
{
	if (OpenSSL_version_num() < 0x30000030L) /* built on 3.0.3+, run on an older one */
		return NULL;
	return calloc(1, sizeof(struct sign_cache));
}

void sign_cache_free(struct sign_cache *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < SIGN_CACHE_SLOTS; i++)
		keyring_clear(&c->slot[i]);
	free(c);
}

char *sign_cache_header_value(struct sign_cache *c, const char *secrets, const char *msg_id,
                              int64_t timestamp, const unsigned char *body, size_t body_len)
{
	struct keyring *r;

	if (secrets == NULL)
		return NULL;
	r = &c->slot[hash_fnv1a(secrets) & (SIGN_CACHE_SLOTS - 1)];
	if (r->secrets == NULL || strcmp(r->secrets, secrets) != 0) {
		struct keyring fresh = {0};
		/* A malformed text (or no memory) leaves the slot's current text in place. */
		if (keyring_fill(&fresh, secrets) != 0)
			return NULL;
		keyring_clear(r);
		*r = fresh;
	}
	return keyring_header_value(r, msg_id, timestamp, body, body_len);
}

int sign_secret_check(const char *secret, const char **why)
{
	struct key k;
	const char *reason = "secret must start with whsec_";
	int rc = -1;

	if (secret == NULL || !has_prefix(secret, V1_PREFIX))
		goto out;
	if (key_parse(secret, &k, &reason) != 0)
		goto out;
	rc = 0;
out:
	OPENSSL_cleanse(&k, sizeof(k));
	if (rc != 0 && why != NULL)
		*why = reason;
	return rc;
}

int sign_secret_same(const char *a, const char *b)
{
	struct key ka, kb;
	int same = 0;

	if (key_parse(a, &ka, NULL) == 0 && key_parse(b, &kb, NULL) == 0)
		same = ka.kind == kb.kind && ka.len == kb.len &&
		       CRYPTO_memcmp(ka.raw, kb.raw, ka.len) == 0;
	OPENSSL_cleanse(&ka, sizeof(ka));
	OPENSSL_cleanse(&kb, sizeof(kb));
	return same;
}

int sign_secret_generate(char *out, size_t out_size)
{
	unsigned char raw[V1_KEY_GEN];
	int rc = -1;

	if (RAND_bytes(raw, sizeof(raw)) != 1)
		goto out;
	rc = b64_encode_prefixed(V1_PREFIX, raw, sizeof(raw), out, out_size);
out:
	OPENSSL_cleanse(raw, sizeof(raw));
	return rc;
}

int sign_keypair_generate(char *secret_out, char *public_out)
{
	unsigned char raw[ED_SEED_LEN + ED_PUB_LEN];
	int rc = -1;

	if (secret_out == NULL || public_out == NULL)
		goto out;
	if (RAND_bytes(raw, ED_SEED_LEN) != 1)
		goto out;
	if (ed_public_from_seed(raw, raw + ED_SEED_LEN) != 0)
		goto out;
	if (b64_encode_prefixed(V1A_PREFIX, raw, sizeof(raw), secret_out, SIGN_SECRET_MAX) != 0)
		goto out;
	if (b64_encode_prefixed(PK_PREFIX, raw + ED_SEED_LEN, ED_PUB_LEN, public_out,
	                        SIGN_SECRET_MAX) != 0)
		goto out;
	rc = 0;
out:
	OPENSSL_cleanse(raw, sizeof(raw));
	return rc;
}

int sign_public_key(const char *secret, char *public_out, size_t out_size)
{
	struct key k;
	int rc = -1;

	if (key_parse(secret, &k, NULL) != 0 || k.kind != KEY_V1A)
		goto out;
	rc = b64_encode_prefixed(PK_PREFIX, k.raw + ED_SEED_LEN, ED_PUB_LEN, public_out, out_size);
out:
	OPENSSL_cleanse(&k, sizeof(k));
	return rc;
}

/* sign_verify with a prepared key. */
static int prepared_verify(struct prepared *p, const char *msg_id, int64_t timestamp,
                           const unsigned char *body, size_t body_len, const char *header_value)
{
	char expected[SIGN_ONE_MAX];
	size_t exp_len;
	size_t pos = 0;
	const char *tok;
	size_t tok_len;
	int matched = 0;

	if (header_value == NULL ||
	    prepared_sign(p, msg_id, timestamp, body, body_len, expected, sizeof(expected)) != 0)
		return -1;
	exp_len = strlen(expected);
	while (next_token(header_value, &pos, &tok, &tok_len) == 0) {
		if (tok_len == exp_len && CRYPTO_memcmp(tok, expected, exp_len) == 0)
			matched = 1;
	}
	return matched ? 0 : -1;
}

int sign_verify(const char *secret, const char *msg_id, int64_t timestamp,
                const unsigned char *body, size_t body_len, const char *header_value)
{
	struct prepared p;
	int rc = -1;

	if (prepared_from_secret(&p, secret) == 0)
		rc = prepared_verify(&p, msg_id, timestamp, body, body_len, header_value);
	prepared_clear(&p);
	return rc;
}

int sign_verify_hmac_key(const void *key, size_t key_len, const char *msg_id, int64_t timestamp,
                         const unsigned char *body, size_t body_len, const char *header_value)
{
	struct prepared p;
	int rc = -1;

	if (prepared_init_hmac(&p, key, key_len) == 0)
		rc = prepared_verify(&p, msg_id, timestamp, body, body_len, header_value);
	prepared_clear(&p);
	return rc;
}

int sign_verify_v1a(const char *public_key, const char *msg_id, int64_t timestamp,
                    const unsigned char *body, size_t body_len, const char *header_value,
                    int *entries)
{
	unsigned char pub[ED_PUB_LEN], sig[ED_SIG_LEN];
	size_t pub_len = 0, sig_len = 0, content_len = 0, pos = 0, tok_len;
	const size_t plen = strlen(PK_PREFIX), tag = strlen("v1a,");
	unsigned char *content = NULL;
	EVP_PKEY *pkey = NULL;
	EVP_MD_CTX *ctx = NULL;
	const char *tok;
	int match = 0, rc = -1;

	*entries = 0;
	if (!has_prefix(public_key, PK_PREFIX))
		goto out;
	const char *b64 = public_key + plen;
	if (b64_decode(b64, strlen(b64), pub, sizeof(pub), &pub_len) != 0 || pub_len != ED_PUB_LEN)
		goto out;
	pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, pub_len);
	content = content_new(msg_id, timestamp, body, body_len, &content_len);
	ctx = EVP_MD_CTX_new();
	if (!pkey || !content || !ctx)
		goto out;
	rc = 0;
	while (header_value && next_token(header_value, &pos, &tok, &tok_len) == 0) {
		if (tok_len < tag || strncmp(tok, "v1a,", tag) != 0)
			continue; /* "v1a," alone is an entry, one that cannot verify */
		++*entries;
		if (match)
			continue;
		if (b64_decode(tok + tag, tok_len - tag, sig, sizeof(sig), &sig_len) != 0 ||
		    sig_len != ED_SIG_LEN)
			continue;
		/* ed25519 is one-shot: EVP_DigestVerify, with the context set up anew each time */
		if (EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey) == 1 &&
		    EVP_DigestVerify(ctx, sig, sig_len, content, content_len) == 1)
			match = *entries;
		EVP_MD_CTX_reset(ctx);
	}
	rc = match;
out:
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pkey);
	free(content);
	return rc;
}
