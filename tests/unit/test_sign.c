/*
 * test_sign.c - Standard Webhooks signing: the published v1 and v1a vectors, header
 * values with several secrets, verification, secret validation, and the cache of
 * prepared keys the dispatcher signs with.
 */
#include "check.h"
#include "sign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* DESIGN.md / Standard Webhooks v1 vector. */
#define V1_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define V1_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
#define MSG_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define TS 1614265330
#define BODY "{\"test\": 2432232314}"

/*
 * v1a vector from the Standard Webhooks reference Go library,
 * standard-webhooks/standard-webhooks libraries/go/webhook_asymmetric_test.go,
 * TestAsymmetricWebhookSign: seed base64 "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="
 * (the 32 ASCII bytes "TESTSIGNINGKEYDONOTUSETHISFORANY"), same id, timestamp and body as
 * the v1 vector. That library takes the 32-byte seed alone; our "whsk_" format is
 * seed + public key (64 bytes), so the public half below was derived from the seed and
 * cross-checked with both `openssl pkey` and python-cryptography.
 */
#define V1A_SECRET                                                                                 \
	"whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTllmU3h6Dt1JKqLSahf2FBSTeius6i4rdBVBKUlr"    \
	"bjxz+A=="
#define V1A_PUBLIC "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g="
#define V1A_SIG                                                                                    \
	"v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeF"    \
	"iL8Ag=="

static const unsigned char *body(void)
{
	return (const unsigned char *)BODY;
}

static void test_vectors(void)
{
	char out[SIGN_ONE_MAX];
	char pub[SIGN_SECRET_MAX];

	CHECK(sign_one(V1_SECRET, MSG_ID, TS, body(), strlen(BODY), out, sizeof(out)) == 0);
	CHECK(strcmp(out, V1_SIG) == 0);

	CHECK(sign_one(V1A_SECRET, MSG_ID, TS, body(), strlen(BODY), out, sizeof(out)) == 0);
	CHECK(strcmp(out, V1A_SIG) == 0);

	CHECK(sign_public_key(V1A_SECRET, pub, sizeof(pub)) == 0);
	CHECK(strcmp(pub, V1A_PUBLIC) == 0);
	CHECK(sign_public_key(V1_SECRET, pub, sizeof(pub)) == -1);
	CHECK(sign_public_key(V1A_SECRET, pub, 10) == -1);

	/* out too small: exactly one byte short of the NUL, and zero. */
	CHECK(sign_one(V1_SECRET, MSG_ID, TS, body(), strlen(BODY), out, strlen(V1_SIG)) == -1);
	CHECK(sign_one(V1_SECRET, MSG_ID, TS, body(), strlen(BODY), out, strlen(V1_SIG) + 1) == 0);
	CHECK(sign_one(V1_SECRET, MSG_ID, TS, body(), strlen(BODY), out, 0) == -1);

	/* Any change to id, timestamp or body changes the signature. */
	CHECK(sign_one(V1_SECRET, MSG_ID, TS + 1, body(), strlen(BODY), out, sizeof(out)) == 0);
	CHECK(strcmp(out, V1_SIG) != 0);
	CHECK(sign_one(V1_SECRET, "msg_other", TS, body(), strlen(BODY), out, sizeof(out)) == 0);
	CHECK(strcmp(out, V1_SIG) != 0);
	CHECK(sign_one(V1_SECRET, MSG_ID, TS, body(), strlen(BODY) - 1, out, sizeof(out)) == 0);
	CHECK(strcmp(out, V1_SIG) != 0);

	/* Empty body is allowed, with or without a pointer. */
	CHECK(sign_one(V1_SECRET, MSG_ID, TS, NULL, 0, out, sizeof(out)) == 0);
	CHECK(strncmp(out, "v1,", 3) == 0);
	CHECK(sign_one(V1_SECRET, MSG_ID, TS, NULL, 5, out, sizeof(out)) == -1);
	CHECK(sign_one(V1_SECRET, NULL, TS, body(), strlen(BODY), out, sizeof(out)) == -1);
}

static void test_malformed_secrets(void)
{
	static const char *const bad[] = {
	    NULL,
	    "",
	    "whsec_",
	    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
	    "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
	    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",             /* not a multiple of 4 */
	    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa!w",            /* bad character */
	    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La LaSw",           /* space */
	    "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAA=",                /* 20 bytes */
	    "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=", /* bare 32-byte seed */
	    /* seed + a public key that is not the seed's (last byte changed) */
	    "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTllmU3h6Dt1JKqLSahf2FBSTeius6i4rdBVBKU"
	    "lrbjxz+Q==",
	};
	char out[SIGN_ONE_MAX];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(sign_one(bad[i], MSG_ID, TS, body(), strlen(BODY), out, sizeof(out)) == -1);
		CHECK(sign_header_value(bad[i], MSG_ID, TS, body(), strlen(BODY)) == NULL);
	}
}

static void test_header_value(void)
{
	char gen[SIGN_SECRET_MAX];
	char one[SIGN_ONE_MAX];
	char expect[3 * SIGN_ONE_MAX];
	char secrets[4 * SIGN_SECRET_MAX];
	char *v;

	v = sign_header_value(V1_SECRET, MSG_ID, TS, body(), strlen(BODY));
	CHECK(v != NULL && strcmp(v, V1_SIG) == 0);
	free(v);

	CHECK(sign_secret_generate(gen, sizeof(gen)) == 0);
	CHECK(sign_one(gen, MSG_ID, TS, body(), strlen(BODY), one, sizeof(one)) == 0);
	snprintf(secrets, sizeof(secrets), "%s %s  %s ", gen, V1_SECRET, V1A_SECRET);
	snprintf(expect, sizeof(expect), "%s %s %s", one, V1_SIG, V1A_SIG);
	v = sign_header_value(secrets, MSG_ID, TS, body(), strlen(BODY));
	CHECK(v != NULL && strcmp(v, expect) == 0);
	free(v);

	/* One bad secret spoils the lot; an empty list is malformed too. */
	snprintf(secrets, sizeof(secrets), "%s whsec_nope", V1_SECRET);
	CHECK(sign_header_value(secrets, MSG_ID, TS, body(), strlen(BODY)) == NULL);
	CHECK(sign_header_value("", MSG_ID, TS, body(), strlen(BODY)) == NULL);
	CHECK(sign_header_value("   ", MSG_ID, TS, body(), strlen(BODY)) == NULL);
	CHECK(sign_header_value(NULL, MSG_ID, TS, body(), strlen(BODY)) == NULL);
}

static void test_verify(void)
{
	const unsigned char *b = body();
	size_t n = strlen(BODY);

	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n, V1_SIG) == 0);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n,
	                  "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= " V1_SIG) == 0);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n,
	                  "v2,abc " V1_SIG
	                  " v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=") == 0);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n,
	                  "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=") == -1);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS + 1, b, n, V1_SIG) == -1);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n - 1, V1_SIG) == -1);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n, "") == -1);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n, NULL) == -1);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n, "v1,") == -1);
	/* A prefix or an extension of the right value is not the right value. */
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n,
	                  "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE") == -1);
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n, V1_SIG "x") == -1);
	/* Bare signature without "v1," is not accepted. */
	CHECK(sign_verify(V1_SECRET, MSG_ID, TS, b, n, V1_SIG + 3) == -1);
	CHECK(sign_verify("whsec_bad", MSG_ID, TS, b, n, V1_SIG) == -1);
	/* ed25519 is deterministic, so a whsk_ secret verifies its own value too. */
	CHECK(sign_verify(V1A_SECRET, MSG_ID, TS, b, n, V1_SIG " " V1A_SIG) == 0);
}

static void test_secret_check(void)
{
	static const struct {
		const char *secret;
		int rc;
		const char *why;
	} cases[] = {
	    {V1_SECRET, 0, NULL},
	    /* exactly 24 bytes and exactly 64 bytes */
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 0, NULL},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	     "AAAAAAA==",
	     0, NULL},
	    /* padding forms: 25 bytes ("==") and 26 bytes ("=") */
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", 0, NULL},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 0, NULL},
	    {NULL, -1, "secret must start with whsec_"},
	    {"", -1, "secret must start with whsec_"},
	    {"whsec", -1, "secret must start with whsec_"},
	    {"whsk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", -1, "secret must start with whsec_"},
	    {" whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", -1, "secret must start with whsec_"},
	    {"whsec_", -1, "secret is not valid base64"},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", -1, "secret is not valid base64"},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA ", -1, "secret is not valid base64"},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-_", -1, "secret is not valid base64"},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAA=AA", -1, "secret is not valid base64"},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", -1, "secret must decode to 24-64 bytes"},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAA=AAA", -1, "secret is not valid base64"},
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA===", -1, "secret is not valid base64"},
	    {"whsec_AAAA", -1, "secret must decode to 24-64 bytes"},
	    /* 23 bytes */
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", -1, "secret must decode to 24-64 bytes"},
	    /* 65 bytes */
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	     "AAAAAAAA=",
	     -1, "secret must decode to 24-64 bytes"},
	    /* unicode bytes */
	    {"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\xc3\xa9", -1, "secret is not valid base64"},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *why = NULL;
		int rc = sign_secret_check(cases[i].secret, &why);

		CHECK(rc == cases[i].rc);
		if (rc != cases[i].rc)
			fprintf(stderr, "  case %zu: %s\n", i,
			        cases[i].secret ? cases[i].secret : "(null)");
		if (cases[i].why != NULL) {
			CHECK(why != NULL && strcmp(why, cases[i].why) == 0);
			if (why == NULL || strcmp(why, cases[i].why) != 0)
				fprintf(stderr, "  case %zu: why=%s\n", i, why ? why : "(null)");
		}
	}
	/* why may be NULL */
	CHECK(sign_secret_check("nope", NULL) == -1);
}

static void test_generate(void)
{
	char a[SIGN_SECRET_MAX];
	char b[SIGN_SECRET_MAX];
	char sk[SIGN_SECRET_MAX];
	char pk[SIGN_SECRET_MAX];
	char pk2[SIGN_SECRET_MAX];
	char sig[SIGN_ONE_MAX];
	const char *why = NULL;

	CHECK(sign_secret_generate(a, sizeof(a)) == 0);
	CHECK(sign_secret_generate(b, sizeof(b)) == 0);
	CHECK(strncmp(a, "whsec_", 6) == 0);
	CHECK(strlen(a) == 6 + 44);
	CHECK(strcmp(a, b) != 0);
	CHECK(sign_secret_check(a, &why) == 0);
	CHECK(sign_secret_generate(a, 50) == -1);
	CHECK(sign_secret_generate(a, 51) == 0);

	CHECK(sign_keypair_generate(sk, pk) == 0);
	CHECK(strncmp(sk, "whsk_", 5) == 0 && strlen(sk) == 5 + 88);
	CHECK(strncmp(pk, "whpk_", 5) == 0 && strlen(pk) == 5 + 44);
	CHECK(sign_public_key(sk, pk2, sizeof(pk2)) == 0);
	CHECK(strcmp(pk, pk2) == 0);
	CHECK(sign_one(sk, MSG_ID, TS, body(), strlen(BODY), sig, sizeof(sig)) == 0);
	CHECK(strncmp(sig, "v1a,", 4) == 0 && strlen(sig) == 4 + 88);
	/* A generated ed25519 secret is not a user-suppliable v1 secret. */
	CHECK(sign_secret_check(sk, &why) == -1);
	CHECK(sign_keypair_generate(NULL, pk) == -1);
}

/* One key spelled two ways in base64 is one secret; another key, another kind or a
 * malformed text is not. */
static void test_secret_same(void)
{
	char a[SIGN_SECRET_MAX];
	char sk[SIGN_SECRET_MAX];
	char pk[SIGN_SECRET_MAX];
	/* 40 bytes of 3: the last character carries 4 unused bits ('w' = 110000) */
	const char *forty = "whsec_AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAw==";
	const char *respelled = "whsec_AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAx==";
	const char *other = "whsec_AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDBA==";

	CHECK(sign_secret_same(forty, forty) == 1);
	CHECK(sign_secret_same(forty, respelled) == 1);
	CHECK(sign_secret_same(forty, other) == 0);
	CHECK(sign_secret_generate(a, sizeof(a)) == 0);
	CHECK(sign_secret_same(a, a) == 1);
	CHECK(sign_secret_same(a, forty) == 0);
	CHECK(sign_keypair_generate(sk, pk) == 0);
	CHECK(sign_secret_same(sk, sk) == 1);
	CHECK(sign_secret_same(sk, a) == 0);
	CHECK(sign_secret_same(forty, "nope") == 0);
	CHECK(sign_secret_same("nope", "nope") == 0);
	CHECK(sign_secret_same(NULL, forty) == 0);
}

/* A cached key signs every later message as a fresh one would: the published vectors
 * on first use and on reuse, other messages, several secrets, and malformed texts. */
static void test_cache_same_as_uncached(void)
{
	struct sign_cache *c = sign_cache_new();
	char gen[SIGN_SECRET_MAX];
	char secrets[3 * SIGN_SECRET_MAX];
	char id[32];
	char *v, *w;

	CHECK(c != NULL);
	if (c == NULL)
		return;
	for (int round = 0; round < 3; round++) {
		v = sign_cache_header_value(c, V1_SECRET, MSG_ID, TS, body(), strlen(BODY));
		CHECK(v != NULL && strcmp(v, V1_SIG) == 0);
		free(v);
		v = sign_cache_header_value(c, V1A_SECRET, MSG_ID, TS, body(), strlen(BODY));
		CHECK(v != NULL && strcmp(v, V1A_SIG) == 0);
		free(v);
	}
	/* A restarted HMAC must not carry the last message into the next one. */
	CHECK(sign_secret_generate(gen, sizeof(gen)) == 0);
	snprintf(secrets, sizeof(secrets), "%s %s", gen, V1A_SECRET);
	for (int i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "msg_%d", i);
		v = sign_cache_header_value(c, secrets, id, TS + i, body(),
		                            strlen(BODY) - (size_t)i);
		w = sign_header_value(secrets, id, TS + i, body(), strlen(BODY) - (size_t)i);
		CHECK(v != NULL && w != NULL && strcmp(v, w) == 0);
		free(v);
		free(w);
	}
	v = sign_cache_header_value(c, V1_SECRET, MSG_ID, TS, NULL, 0);
	w = sign_header_value(V1_SECRET, MSG_ID, TS, NULL, 0);
	CHECK(v != NULL && w != NULL && strcmp(v, w) == 0);
	free(v);
	free(w);
	CHECK(sign_cache_header_value(c, V1_SECRET, NULL, TS, body(), 1) == NULL);

	/* Malformed texts are refused every time, and leave the good ones working. */
	snprintf(secrets, sizeof(secrets), "%s whsec_nope", V1_SECRET);
	for (int i = 0; i < 2; i++) {
		CHECK(sign_cache_header_value(c, secrets, MSG_ID, TS, body(), strlen(BODY)) ==
		      NULL);
		CHECK(sign_cache_header_value(c, "  ", MSG_ID, TS, body(), strlen(BODY)) == NULL);
		CHECK(sign_cache_header_value(c, NULL, MSG_ID, TS, body(), strlen(BODY)) == NULL);
	}
	v = sign_cache_header_value(c, V1_SECRET, MSG_ID, TS, body(), strlen(BODY));
	CHECK(v != NULL && strcmp(v, V1_SIG) == 0);
	free(v);
	sign_cache_free(c);
	sign_cache_free(NULL);
}

/* More secrets texts than the cache has slots, used in turns: each text that loses its
 * slot is prepared again, never signed with another text's keys. */
static void test_cache_eviction(void)
{
	enum { TEXTS = 1500 };
	struct sign_cache *c = sign_cache_new();
	static char texts[TEXTS][SIGN_SECRET_MAX];
	char one[SIGN_ONE_MAX];
	char *v;
	int wrong = 0;

	CHECK(c != NULL);
	if (c == NULL)
		return;
	for (int i = 0; i < TEXTS; i++)
		CHECK(sign_secret_generate(texts[i], sizeof(texts[i])) == 0);
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < TEXTS; i++) {
			v = sign_cache_header_value(c, texts[i], MSG_ID, TS, body(), strlen(BODY));
			if (sign_one(texts[i], MSG_ID, TS, body(), strlen(BODY), one,
			             sizeof(one)) != 0 ||
			    v == NULL || strcmp(v, one) != 0)
				wrong++;
			free(v);
		}
	}
	CHECK(wrong == 0);
	sign_cache_free(c);
}

int main(void)
{
	test_vectors();
	test_malformed_secrets();
	test_header_value();
	test_verify();
	test_secret_check();
	test_generate();
	test_secret_same();
	test_cache_same_as_uncached();
	test_cache_eviction();
	return CHECK_DONE();
}
