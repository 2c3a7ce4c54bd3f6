/* hash.h - FNV-1a over a NUL-terminated string, for the small in-memory tables of the
 * delivery side (the sender's hosts, the signer's prepared keys) and the store's table of
 * receiver hosts. Not for anything an
 * attacker must not be able to collide: callers compare the full key. Pure. */
#ifndef HOOKRELAY_HASH_H
#define HOOKRELAY_HASH_H

#include <stdint.h>

static inline uint32_t hash_fnv1a(const char *s)
{
	uint32_t h = 2166136261u;

	for (const unsigned char *c = (const unsigned char *)s; *c; c++)
		h = (h ^ *c) * 16777619u;
	return h;
}

#endif
