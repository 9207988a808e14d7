/* secret.h - what ferry does with secrets (secret.c): seal and open
 * stored values with AES-256-GCM (OpenSSL libcrypto), and compare
 * secrets in constant time.
 *
 * A sealed value is text, safe in any TEXT column:
 *
 *   enc:v1:<base64 of nonce (12) | ciphertext | tag (16)>
 *
 * Two keys are derived from the operator's 32-byte key (HMAC-SHA-256 of
 * fixed labels): one encrypts, one makes synthetic nonces.  A value is
 * sealed with a random nonce, or, when it must be found again by equality
 * (a store key), with a nonce derived from the value itself (HMAC-SHA-256
 * under the second key, as AES-GCM-SIV does): the same value then seals
 * to the same text, which reveals only that two values are equal.
 *
 * ferry_secret_equal (exported in ferry.h) compares SHA-256 digests of
 * both sides with CRYPTO_memcmp, so its time depends neither on where
 * the two differ nor on the secret's length. */
#ifndef FERRY_SECRET_H
#define FERRY_SECRET_H

#include <stddef.h>

#define SECRET_KEY_LEN 32
#define SECRET_PREFIX "enc:v1:"

/* Keys derived from the operator's key; wiped by secret_key_wipe. */
struct secret_key {
    unsigned char enc[SECRET_KEY_LEN]; /* private: the AES-256-GCM key */
    unsigned char siv[SECRET_KEY_LEN]; /* private: the synthetic-nonce key */
};

/* Derive k from a 32-byte master key.  0, or -1 (libcrypto failed). */
int secret_key_derive(struct secret_key *k, const unsigned char *master, size_t len);
void secret_key_wipe(struct secret_key *k);

/* Whether s is a sealed value (starts with SECRET_PREFIX). */
int secret_is_sealed(const char *s);

/* Seal the NUL-terminated plain text: a malloc'd sealed string, or NULL
 * (out of memory, libcrypto failure).  deterministic: derive the nonce
 * from the value (see above) instead of drawing it at random. */
char *secret_seal(const struct secret_key *k, const char *plain, int deterministic);

/* Open a sealed value: 0 and *plain (malloc'd, NUL-terminated); -1 when
 * it is not ours to open (malformed, another key, tampered with); -2 out
 * of memory.  Never yields anything on failure. */
int secret_open(const struct secret_key *k, const char *sealed, char **plain);

#endif
