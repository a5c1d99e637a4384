/*
 * Codes and signatures with libsodium: device keys in sodium_malloc'ed
 * read-only memory, uniform one-time codes (randombytes_uniform), keyed
 * BLAKE2b hashes so the database never holds a plain code, Ed25519
 * credentials for QR codes, and the ledger's signatures and chain.
 */
#include "codes.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEYFILE_MAX 1024

static codes_uniform_fn uniform = randombytes_uniform;

int
codes_init(void)
{
	return sodium_init() < 0 ? -1 : 0;
}

void
codes_set_uniform(codes_uniform_fn fn)
{
	uniform = fn ? fn : randombytes_uniform;
}

static struct codes_keys *
keys_alloc(void)
{
	struct codes_keys *k = sodium_malloc(sizeof(*k));

	if (k != NULL)
		memset(k, 0, sizeof(*k));
	return k;
}

struct codes_keys *
codes_keys_new(void)
{
	struct codes_keys *k = keys_alloc();

	if (k == NULL)
		return NULL;
	crypto_sign_keypair(k->sign_pk, k->sign_sk);
	crypto_generichash_keygen(k->hash_key);
	sodium_mprotect_readonly(k);
	return k;
}

void
codes_keys_free(struct codes_keys *k)
{
	if (k != NULL)
		sodium_free(k);
}

/* The new file's name must survive a power cut too: fsync its folder. */
static int
dir_sync(const char *path, char *err, size_t errlen)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	int fd, rc;

	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	rc = fsync(fd);
	if (rc == -1)
		snprintf(err, errlen, "%s: fsync: %s", dir, strerror(errno));
	close(fd);
	return rc;
}

static int
keys_write(const char *path, const struct codes_keys *k, char *err,
    size_t errlen)
{
	char sk[sodium_base64_ENCODED_LEN(64, sodium_base64_VARIANT_ORIGINAL)];
	char hk[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
	char buf[KEYFILE_MAX];
	int fd, n, rc = -1;

	sodium_bin2base64(sk, sizeof(sk), k->sign_sk, 64,
	    sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(hk, sizeof(hk), k->hash_key, 32,
	    sodium_base64_VARIANT_ORIGINAL);
	n = snprintf(buf, sizeof(buf), "# lockerd device keys: keep secret, "
	    "mode 0600, never copy into the database\nsign_sk=%s\n"
	    "hash_key=%s\n", sk, hk);
	sodium_memzero(sk, sizeof(sk));
	sodium_memzero(hk, sizeof(hk));
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	    0600);
	if (fd == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (write(fd, buf, (size_t)n) != n || fsync(fd) == -1) {
		snprintf(err, errlen, "%s: writing: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		goto out;
	}
	if (close(fd) == -1) {
		snprintf(err, errlen, "%s: closing: %s", path, strerror(errno));
		unlink(path);
		goto out;
	}
	rc = dir_sync(path, err, errlen);
out:
	sodium_memzero(buf, sizeof(buf));
	return rc;
}

static int
keys_parse(char *text, struct codes_keys *k, const char *path, char *err,
    size_t errlen)
{
	uint8_t seed[crypto_sign_SEEDBYTES], sk[crypto_sign_SECRETKEYBYTES];
	char *line, *save = NULL;
	size_t len;
	int have_sk = 0, have_hk = 0, ok;

	for (line = strtok_r(text, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#' || line[0] == '\0')
			continue;
		if (strncmp(line, "sign_sk=", 8) == 0)
			have_sk = sodium_base642bin(k->sign_sk, 64, line + 8,
			    strlen(line + 8), NULL, &len, NULL,
			    sodium_base64_VARIANT_ORIGINAL) == 0 && len == 64;
		else if (strncmp(line, "hash_key=", 9) == 0)
			have_hk = sodium_base642bin(k->hash_key, 32, line + 9,
			    strlen(line + 9), NULL, &len, NULL,
			    sodium_base64_VARIANT_ORIGINAL) == 0 && len == 32;
	}
	if (!have_sk || !have_hk) {
		snprintf(err, errlen, "%s: not a lockerd key file (needs "
		    "sign_sk and hash_key)", path);
		return -1;
	}
	/*
	 * The second half of sign_sk is the public key; a damaged one would
	 * make every signature fail to verify, so derive it from the seed.
	 */
	crypto_sign_ed25519_sk_to_seed(seed, k->sign_sk);
	crypto_sign_seed_keypair(k->sign_pk, sk, seed);
	ok = sodium_memcmp(sk, k->sign_sk, sizeof(sk)) == 0;
	sodium_memzero(seed, sizeof(seed));
	sodium_memzero(sk, sizeof(sk));
	if (!ok) {
		snprintf(err, errlen, "%s: sign_sk is damaged (its public "
		    "half does not match its seed)", path);
		return -1;
	}
	return 0;
}

struct codes_keys *
codes_keys_load(const char *path, char *err, size_t errlen)
{
	return codes_keys_open(path, 1, err, errlen);
}

struct codes_keys *
codes_keys_open(const char *path, int create, char *err, size_t errlen)
{
	struct codes_keys *k;
	char *text = NULL;
	struct stat st;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1 && errno == ENOENT && !create) {
		snprintf(err, errlen, "%s: no such key file", path);
		errno = ENOENT;
		return NULL;
	}
	if (fd == -1 && errno == ENOENT) {
		if ((k = codes_keys_new()) == NULL) {
			snprintf(err, errlen, "%s: out of memory", path);
			return NULL;
		}
		if (keys_write(path, k, err, errlen) == -1) {
			codes_keys_free(k);
			return NULL;
		}
		return k;
	}
	if (fd == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		close(fd);
		return NULL;
	}
	if (st.st_mode & 077) {
		snprintf(err, errlen, "%s: the key file can be read by others "
		    "(mode %04o); refusing to use it: chmod 600 %s, and if "
		    "others may have read it, replace the keys", path,
		    (unsigned)(st.st_mode & 07777), path);
		close(fd);
		return NULL;
	}
	if (st.st_uid != geteuid()) {
		snprintf(err, errlen, "%s: the key file belongs to uid %u, not "
		    "to lockerd's uid %u", path, (unsigned)st.st_uid,
		    (unsigned)geteuid());
		close(fd);
		return NULL;
	}
	if ((text = sodium_malloc(KEYFILE_MAX + 1)) == NULL ||
	    (k = keys_alloc()) == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		sodium_free(text);
		close(fd);
		return NULL;
	}
	n = read(fd, text, KEYFILE_MAX);
	close(fd);
	if (n < 0 || n == KEYFILE_MAX) {
		snprintf(err, errlen, "%s: %s", path, n < 0 ? strerror(errno) :
		    "too large for a key file");
		goto fail;
	}
	text[n] = '\0';
	if (keys_parse(text, k, path, err, errlen) == -1)
		goto fail;
	sodium_free(text);
	sodium_mprotect_readonly(k);
	return k;
fail:
	sodium_free(text);
	codes_keys_free(k);
	return NULL;
}

void
codes_generate(char *out, int n)
{
	int i;

	for (i = 0; i < n; i++)
		out[i] = (char)('0' + uniform(10));
	out[n] = '\0';
}

void
codes_hash(const struct codes_keys *k, const char *what, const char *digits,
    uint8_t out[CODES_HASH_LEN])
{
	crypto_generichash_state st;

	crypto_generichash_init(&st, k->hash_key, sizeof(k->hash_key),
	    CODES_HASH_LEN);
	/* "code\0" and "phone\0" keep the two kinds of digits apart. */
	crypto_generichash_update(&st, (const uint8_t *)what, strlen(what) + 1);
	crypto_generichash_update(&st, (const uint8_t *)digits, strlen(digits));
	crypto_generichash_final(&st, out, CODES_HASH_LEN);
}

int
codes_equal(const uint8_t *a, const uint8_t *b, size_t len)
{
	return sodium_memcmp(a, b, len) == 0;
}

int
codes_valid_digits(const char *s, int min, int max)
{
	int n = 0;

	for (; *s; s++, n++)
		if (*s < '0' || *s > '9')
			return 0;
	return n >= min && n <= max;
}

void
codes_sign(const struct codes_keys *k, const void *msg, size_t len,
    uint8_t sig[CODES_SIG_LEN])
{
	crypto_sign_detached(sig, NULL, msg, len, k->sign_sk);
}

int
codes_verify(const uint8_t pk[CODES_PK_LEN], const void *msg, size_t len,
    const uint8_t sig[CODES_SIG_LEN])
{
	return crypto_sign_verify_detached(sig, msg, len, pk) == 0 ? 0 : -1;
}

void
codes_mac(const struct codes_keys *k, const char *what, const void *msg,
    size_t len, uint8_t out[CODES_HASH_LEN])
{
	crypto_generichash_state st;

	crypto_generichash_init(&st, k->hash_key, sizeof(k->hash_key),
	    CODES_HASH_LEN);
	crypto_generichash_update(&st, (const uint8_t *)what, strlen(what) + 1);
	crypto_generichash_update(&st, msg, len);
	crypto_generichash_final(&st, out, CODES_HASH_LEN);
}

void
codes_digest(const void *msg, size_t len, uint8_t out[CODES_HASH_LEN])
{
	crypto_generichash(out, CODES_HASH_LEN, msg, len, NULL, 0);
}

int
codes_hex(const uint8_t *bin, size_t len, char *out, size_t outlen)
{
	if (outlen < len * 2 + 1)
		return -1;
	sodium_bin2hex(out, outlen, bin, len);
	return 0;
}

int
codes_unhex(const char *hex, uint8_t *bin, size_t len)
{
	size_t got;

	if (strlen(hex) != len * 2 ||
	    sodium_hex2bin(bin, len, hex, len * 2, NULL, &got, NULL) != 0 ||
	    got != len)
		return -1;
	return 0;
}

int
codes_b64(const uint8_t *bin, size_t len, char *out, size_t outlen)
{
	if (outlen < sodium_base64_ENCODED_LEN(len,
	    sodium_base64_VARIANT_URLSAFE_NO_PADDING))
		return -1;
	sodium_bin2base64(out, outlen, bin, len,
	    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	return 0;
}

int
codes_unb64(const char *b64, uint8_t *bin, size_t maxlen, size_t *len)
{
	return sodium_base642bin(bin, maxlen, b64, strlen(b64), NULL, len,
	    NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0 ? 0 : -1;
}

#define CRED_MAGIC "LKC1"
#define CRED_FIXED (4 + 1 + 8 + 2 + 1 + 8 + CODES_HASH_LEN)
#define CRED_BIN_MAX (CRED_FIXED + 64 + CODES_SIG_LEN)

static void
put_be(uint8_t *p, uint64_t v, int n)
{
	int i;

	for (i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t
get_be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

int
codes_cred_make(const struct codes_keys *k, const struct codes_cred *c,
    char *out, size_t outlen)
{
	uint8_t buf[CRED_BIN_MAX], *p = buf;
	size_t l = strlen(c->locker);

	if (l == 0 || l > 64 || c->cell < 0 || c->cell > 0xffff)
		return -1;
	memcpy(p, CRED_MAGIC, 4), p += 4;
	*p++ = (uint8_t)l;
	memcpy(p, c->locker, l), p += l;
	put_be(p, (uint64_t)c->resv, 8), p += 8;
	put_be(p, (uint64_t)c->cell, 2), p += 2;
	*p++ = (uint8_t)c->purpose;
	put_be(p, (uint64_t)c->not_after, 8), p += 8;
	memcpy(p, c->code_hash, CODES_HASH_LEN), p += CODES_HASH_LEN;
	codes_sign(k, buf, (size_t)(p - buf), p);
	p += CODES_SIG_LEN;
	return codes_b64(buf, (size_t)(p - buf), out, outlen);
}

int
codes_cred_parse(const uint8_t pk[CODES_PK_LEN], const char *s,
    struct codes_cred *out, const char **reason)
{
	uint8_t buf[CRED_BIN_MAX];
	const uint8_t *p = buf;
	size_t len, l;

	*reason = "not a locker credential";
	if (strlen(s) >= CODES_CRED_MAX ||
	    codes_unb64(s, buf, sizeof(buf), &len) == -1 ||
	    len < CRED_FIXED + CODES_SIG_LEN)
		return -1;
	if (memcmp(p, CRED_MAGIC, 4) != 0) {
		*reason = "unknown credential version";
		return -1;
	}
	p += 4;
	l = *p++;
	if (l == 0 || l > 64 || len != CRED_FIXED + l + CODES_SIG_LEN)
		return -1;
	if (codes_verify(pk, buf, len - CODES_SIG_LEN, buf + len -
	    CODES_SIG_LEN) == -1) {
		*reason = "the credential's signature is not valid";
		return -1;
	}
	memset(out, 0, sizeof(*out));
	memcpy(out->locker, p, l), p += l;
	out->resv = (int64_t)get_be(p, 8), p += 8;
	out->cell = (int)get_be(p, 2), p += 2;
	out->purpose = (enum codes_purpose)*p++;
	out->not_after = (int64_t)get_be(p, 8), p += 8;
	memcpy(out->code_hash, p, CODES_HASH_LEN);
	if (out->purpose != CODES_DROPOFF && out->purpose != CODES_PICKUP) {
		*reason = "unknown credential purpose";
		return -1;
	}
	*reason = NULL;
	return 0;
}
