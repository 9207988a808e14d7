/* secret.c - sealing stored values and comparing secrets (see secret.h). */
#include "secret.h"
#include "ferry.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define NONCE_LEN 12
#define TAG_LEN 16
/* Binds a sealed value to what it is: a ferry store value, format 1. */
static const unsigned char aad[] = "ferry-store:v1";

static int hmac256(const unsigned char *key, const void *data, size_t n, unsigned char *out)
{
    unsigned int len = 0;
    return HMAC(EVP_sha256(), key, SECRET_KEY_LEN, data, n, out, &len) != NULL &&
           len == SECRET_KEY_LEN ? 0 : -1;
}

int secret_key_derive(struct secret_key *k, const unsigned char *master, size_t len)
{
    static const char enc_label[] = "ferry store: encryption key v1";
    static const char siv_label[] = "ferry store: synthetic nonce key v1";
    if (len != SECRET_KEY_LEN ||
        hmac256(master, enc_label, sizeof(enc_label) - 1, k->enc) != 0 ||
        hmac256(master, siv_label, sizeof(siv_label) - 1, k->siv) != 0) {
        secret_key_wipe(k);
        return -1;
    }
    return 0;
}

void secret_key_wipe(struct secret_key *k)
{
    OPENSSL_cleanse(k, sizeof(*k));
}

int secret_is_sealed(const char *s)
{
    return s != NULL && strncmp(s, SECRET_PREFIX, sizeof(SECRET_PREFIX) - 1) == 0;
}

/* AES-256-GCM over in[0..n) into out (n bytes) and tag; 0 or -1. */
static int gcm(int encrypt, const unsigned char *key, const unsigned char *nonce,
               const unsigned char *in, int n, unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, rc = -1;
    if (ctx == NULL) {
        return -1;
    }
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, encrypt) != 1 ||
        EVP_CipherUpdate(ctx, NULL, &len, aad, (int)sizeof(aad) - 1) != 1 ||
        (n > 0 && EVP_CipherUpdate(ctx, out, &len, in, n) != 1)) {
        goto done;
    }
    if (!encrypt && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1) {
        goto done;
    }
    /* GCM is a stream mode: Final writes nothing, but checks the tag. */
    if (EVP_CipherFinal_ex(ctx, out + (n > 0 ? len : 0), &len) != 1) {
        goto done;
    }
    if (encrypt && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1) {
        goto done;
    }
    rc = 0;
done:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

char *secret_seal(const struct secret_key *k, const char *plain, int deterministic)
{
    size_t n = strlen(plain);
    if (n > (1u << 20)) {
        return NULL; /* store values are URLs and ids, never this long */
    }
    size_t raw_len = NONCE_LEN + n + TAG_LEN;
    unsigned char *raw = malloc(raw_len);
    size_t pre = sizeof(SECRET_PREFIX) - 1;
    char *out = malloc(pre + 4 * ((raw_len + 2) / 3) + 1);
    int ok = raw != NULL && out != NULL;
    if (ok && deterministic) {
        unsigned char mac[SECRET_KEY_LEN];
        ok = hmac256(k->siv, plain, n, mac) == 0;
        if (ok) {
            memcpy(raw, mac, NONCE_LEN);
        }
    } else if (ok) {
        ok = RAND_bytes(raw, NONCE_LEN) == 1;
    }
    ok = ok && gcm(1, k->enc, raw, (const unsigned char *)plain, (int)n, raw + NONCE_LEN,
                   raw + NONCE_LEN + n) == 0;
    if (ok) {
        memcpy(out, SECRET_PREFIX, pre);
        EVP_EncodeBlock((unsigned char *)out + pre, raw, (int)raw_len);
    }
    free(raw);
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

int secret_open(const struct secret_key *k, const char *sealed, char **plain)
{
    *plain = NULL;
    if (!secret_is_sealed(sealed)) {
        return -1;
    }
    const char *b64 = sealed + sizeof(SECRET_PREFIX) - 1;
    size_t blen = strlen(b64);
    if (blen == 0 || blen % 4 != 0 || blen > (2u << 20)) {
        return -1;
    }
    unsigned char *raw = malloc(blen / 4 * 3);
    if (raw == NULL) {
        return -2;
    }
    int got = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)blen);
    /* DecodeBlock counts the padding as zero bytes: take them off. */
    size_t pad = (b64[blen - 1] == '=') + (b64[blen - 2] == '=');
    if (got < 0 || (size_t)got < pad + NONCE_LEN + TAG_LEN) {
        free(raw);
        return -1;
    }
    size_t n = (size_t)got - pad - NONCE_LEN - TAG_LEN;
    char *out = malloc(n + 1);
    if (out == NULL) {
        free(raw);
        return -2;
    }
    if (gcm(0, k->enc, raw, raw + NONCE_LEN, (int)n, (unsigned char *)out,
            raw + NONCE_LEN + n) != 0 || memchr(out, '\0', n) != NULL) {
        OPENSSL_cleanse(out, n);
        free(out);
        free(raw);
        return -1;
    }
    out[n] = '\0';
    free(raw);
    *plain = out;
    return 0;
}

int ferry_secret_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
    if (a == NULL || b == NULL) {
        return 0;
    }
    if (EVP_Digest(a, alen, da, NULL, EVP_sha256(), NULL) != 1 ||
        EVP_Digest(b, blen, db, NULL, EVP_sha256(), NULL) != 1) {
        return 0;
    }
    return CRYPTO_memcmp(da, db, sizeof(da)) == 0;
}

int ferry_secret_hmac(const char *key, size_t klen, const char *data, size_t n,
                      unsigned char *out)
{
    unsigned int len = 0;
    if (key == NULL || data == NULL || out == NULL || klen > INT_MAX) {
        return -1;
    }
    return HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)data, n, out, &len) != NULL &&
           len == 32 ? 0
           : -1;
}
