/*
 * The ledger's high-water mark, and the start-up check of the database
 * against it (mark.h): what the database says is believed only where the
 * signed, chained events say the same.
 */
#include "mark.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "custody.h"
#include "ledger.h"
#include "lockerd.h"
#include "log.h"
#include "notify.h"
#include "util.h"

#define MARK_MAGIC "LKM1"
#define MARK_BODY 80            /* the MACed part of a slot */

static void
put64(unsigned char *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static uint64_t
get64(const unsigned char *p)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

void
mark_encode(const struct codes_keys *k, const struct mark *m,
    unsigned char slot[MARK_SLOT])
{
	memset(slot, 0, MARK_SLOT);
	memcpy(slot, MARK_MAGIC, 4);
	put64(slot + 4, m->gen);
	put64(slot + 12, (uint64_t)m->seq);
	memcpy(slot + 20, m->hash, 32);
	put64(slot + 52, (uint64_t)m->ckpt);
	put64(slot + 60, (uint64_t)m->delivered);
	put64(slot + 68, (uint64_t)m->boot);
	slot[76] = m->clean ? 1 : 0;
	codes_mac(k, "mark", slot, MARK_BODY, slot + MARK_BODY);
}

int
mark_decode(const struct codes_keys *k, const unsigned char *slot,
    struct mark *m)
{
	uint8_t mac[CODES_HASH_LEN];

	if (memcmp(slot, MARK_MAGIC, 4) != 0)
		return -1;
	codes_mac(k, "mark", slot, MARK_BODY, mac);
	if (!codes_equal(mac, slot + MARK_BODY, sizeof(mac)))
		return -1;
	memset(m, 0, sizeof(*m));
	m->gen = get64(slot + 4);
	m->seq = (int64_t)get64(slot + 12);
	memcpy(m->hash, slot + 20, 32);
	m->ckpt = (int64_t)get64(slot + 52);
	m->delivered = (int64_t)get64(slot + 60);
	m->boot = (int64_t)get64(slot + 68);
	m->clean = slot[76] & 1;
	if (m->seq < 0 || m->ckpt < 0 || m->ckpt > m->seq ||
	    m->delivered < 0 || m->delivered > m->seq)
		return -1;
	return 0;
}

/* 0 and the newer slot that verifies, 1 no file, 2 none verifies, -1. */
static int
mark_read(struct lockerd *d, struct mark *m, int *which)
{
	unsigned char buf[2 * MARK_SLOT];
	struct mark a, b;
	int rc, ha, hb;

	if ((rc = store_mark_read(d->store, buf, sizeof(buf))) != 0)
		return rc;
	ha = mark_decode(d->keys, buf, &a) == 0;
	hb = mark_decode(d->keys, buf + MARK_SLOT, &b) == 0;
	if (!ha && !hb)
		return 2;
	*which = ha && (!hb || a.gen > b.gen) ? 0 : 1;
	*m = *which == 0 ? a : b;
	return 0;
}

static void
hex32(const uint8_t *bin, char hex[65])
{
	codes_hex(bin, 32, hex, 65);
}

/*
 * The mark follows the commits a moment after them (mark_tick), but waits
 * for the disk at most every sync_ms: a write in between goes to the page
 * cache, and the slot that was last synced is never written until another
 * one is, so a power cut tears at most the other slot and finds the mark
 * behind (by what was committed since the last sync), never ahead.
 */
static int
mark_write(struct lockerd *d, const struct mark *m, int sync)
{
	struct mark_head *h = &d->head;
	unsigned char slot[MARK_SLOT];
	int rc;

	mark_encode(d->keys, m, slot);
	rc = store_mark_write(d->store, slot, sizeof(slot),
	    (int64_t)(h->synced_slot ^ 1) * MARK_SLOT, sync);
	if (rc == -1) {
		log_error("%s: the ledger's mark could not be written; a "
		    "restart may take a cut database for this one",
		    store_mark_path(d->store));
		return -1;
	}
	h->m = *m;
	h->dirty = 0;
	h->unsynced = !sync;
	if (sync) {
		h->synced_slot ^= 1;
		h->synced_ms = util_mono_ms();
	}
	return 0;
}

int
mark_flush(struct lockerd *d, int clean)
{
	struct mark_head *h = &d->head;
	int64_t first, now = util_mono_ms();
	struct mark m;

	if (!h->ready || h->held[0] != '\0')
		return 0;
	if (!h->dirty && !clean) {
		/* Written, not yet synced, and the time has come. */
		if (!h->unsynced || now - h->synced_ms < h->sync_ms)
			return 0;
		if (store_mark_sync(d->store) == -1) {
			h->synced_ms = now;     /* again later, no busy loop */
			return -1;
		}
		h->unsynced = 0;
		h->synced_slot ^= 1;
		h->synced_ms = now;
		return 0;
	}
	if ((first = store_first_undelivered(d->store)) == -1)
		return -1;
	m = h->m;
	m.gen++;
	m.seq = h->seq;
	memcpy(m.hash, d->ledger_prev, sizeof(m.hash));
	m.delivered = first > 0 ? first - 1 : h->seq;
	if (m.delivered > m.seq)
		m.delivered = m.seq;
	m.boot = d->boot;
	m.clean = clean;
	return mark_write(d, &m, clean || h->synced_ms == 0 ||
	    now - h->synced_ms >= h->sync_ms);
}

int64_t
mark_next(struct lockerd *d)
{
	struct mark_head *h = &d->head;

	if (h->held[0] != '\0')
		return INT64_MAX;
	if (h->dirty)
		return h->dirty_ms + h->delay_ms;
	return h->unsynced ? h->synced_ms + h->sync_ms : INT64_MAX;
}

/* ---- Holding --------------------------------------------------------- */

/* The digest of an event by seq (zeros for seq 0); 0, 1 none, -1. */
struct one_arg {
	int64_t seq;
	json_t *o;
};

static int
one_event(int64_t seq, const char *body, void *arg)
{
	struct one_arg *oa = arg;

	if (seq == oa->seq)
		oa->o = json_loads(body, JSON_REJECT_DUPLICATES, NULL);
	return -1;
}

static json_t *
event_at(struct lockerd *d, int64_t seq)
{
	struct one_arg oa = { seq, NULL };

	if (seq > 0)
		store_events_after(d->store, seq - 1, 1, one_event, &oa);
	return oa.o;
}

static int
digest_at(struct lockerd *d, int64_t seq, uint8_t out[32])
{
	json_t *o;
	int rc;

	memset(out, 0, 32);
	if (seq == 0)
		return 0;
	if ((o = event_at(d, seq)) == NULL)
		return 1;
	rc = ledger_digest(o, out) == 0 ? 0 : 1;
	json_decref(o);
	return rc;
}

static void hold(struct lockerd *d, int64_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Nothing is recorded and no door opens (tx_begin refuses) until the
 * platform's restore_ack; the link still comes up so that it can arrive,
 * with the database's head and the reason in the birth message.
 */
static void
hold(struct lockerd *d, int64_t n, const char *fmt, ...)
{
	struct mark_head *h = &d->head;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(h->held, sizeof(h->held), fmt, ap);
	va_end(ap);
	h->seq = h->pend = n;
	digest_at(d, n, d->ledger_prev);
	log_error("ledger: %s", h->held);
	log_error("ledger: HELD: lockerd opens no door and records nothing "
	    "until the platform acknowledges where to resume (a signed "
	    "restore_ack for database head seq %lld); see \"Recovery after "
	    "an SD card failure\" in the README", (long long)n);
	if (d->cfg.mqtt.host[0] == '\0' || d->cfg.mqtt.platform_key[0] ==
	    '\0')
		log_error("ledger: HELD, and the acknowledgement cannot come: "
		    "it needs the platform link ([mqtt] host) and the "
		    "platform's key ([mqtt] platform_key) to verify it");
	notify_status("held: %s", h->held);
}

/* ---- The start-up check -------------------------------------------- */

/* What the verified part of the ledger says, event by event. */
struct w_resv {
	int64_t id, seq;
	int live;
};

struct w_staff {
	char id[STAFF_ID_MAX];
	int64_t seq;
};

struct w_fix {
	int64_t seq, resv;
	char staff[STAFF_ID_MAX];
	int has_staff;
};

struct walk {
	struct lockerd *d;
	int64_t mseq;            /* to here hashes, after it signatures */
	int64_t from, expect;
	uint8_t prev[32];        /* the digest of the last event walked */
	int have_prev;
	int64_t brk;             /* events before it are not chained */
	int64_t bad;             /* the first event after the mark that fails */
	char bad_why[200];
	int64_t last;
	struct ledger_verify v;
	struct w_resv *resv;
	size_t nresv, capresv;
	struct w_staff *staff;
	size_t nstaff, capstaff;
	struct w_fix *fix;
	size_t nfix, capfix;
	json_t *ckpt;            /* the checkpoint the window starts at */
	int64_t marked;          /* a start under a mark was recorded here */
	int oom;
};

static void *
grow(void *p, size_t *cap, size_t n, size_t size, int *oom)
{
	void *q;

	if (n < *cap)
		return p;
	*cap = *cap ? *cap * 2 : 64;
	if ((q = realloc(p, *cap * size)) == NULL) {
		*oom = 1;
		*cap /= 2;
		return p;
	}
	return q;
}

static int
is_type(json_t *o, const char *type)
{
	const char *t = json_string_value(json_object_get(o, "type"));

	return t != NULL && strcmp(t, type) == 0;
}

/* Who an event is about, and whether the database's columns agree. */
static void
collect(struct walk *w, int64_t seq, json_t *o, int64_t col_resv,
    const char *col_staff)
{
	json_t *jr = json_object_get(o, "resv");
	const char *staff = NULL, *st;
	enum resv_state state;
	int64_t resv = 0;

	if (json_is_integer(jr) && json_integer_value(jr) > 0) {
		resv = json_integer_value(jr);
		w->resv = grow(w->resv, &w->capresv, w->nresv,
		    sizeof(*w->resv), &w->oom);
		if (w->nresv < w->capresv) {
			st = json_string_value(json_object_get(o, "state"));
			w->resv[w->nresv].id = resv;
			w->resv[w->nresv].seq = seq;
			w->resv[w->nresv].live = st != NULL &&
			    resv_state_parse(st, &state) == 0 &&
			    !resv_is_terminal(state);
			w->nresv++;
		}
	}
	if ((is_type(o, "staff_added") || is_type(o, "staff_revoked")) &&
	    (staff = json_string_value(json_object_get(o, "staff"))) != NULL &&
	    strlen(staff) < STAFF_ID_MAX) {
		w->staff = grow(w->staff, &w->capstaff, w->nstaff,
		    sizeof(*w->staff), &w->oom);
		if (w->nstaff < w->capstaff) {
			util_strlcpy(w->staff[w->nstaff].id, staff,
			    STAFF_ID_MAX);
			w->staff[w->nstaff++].seq = seq;
		}
	} else
		staff = NULL;
	if (seq == w->from && is_type(o, "checkpoint"))
		w->ckpt = json_incref(o);
	if (is_type(o, "started") && json_object_get(o, "mark_seq") != NULL)
		w->marked = seq;
	if (col_resv == resv && (staff == NULL ? col_staff == NULL :
	    col_staff != NULL && strcmp(staff, col_staff) == 0))
		return;
	w->fix = grow(w->fix, &w->capfix, w->nfix, sizeof(*w->fix), &w->oom);
	if (w->nfix < w->capfix) {
		w->fix[w->nfix].seq = seq;
		w->fix[w->nfix].resv = resv;
		w->fix[w->nfix].has_staff = staff != NULL;
		util_strlcpy(w->fix[w->nfix].staff, staff ? staff : "",
		    STAFF_ID_MAX);
		w->nfix++;
	}
}

/* A restored event may skip seqs (ledger.h). */
static int
skips(json_t *o, int64_t seq, int64_t expect)
{
	json_t *from = json_object_get(o, "from_seq");

	return is_type(o, "restored") && seq > expect && json_is_integer(from)
	    && json_integer_value(from) == expect - 1;
}

/*
 * Up to the mark, the chain is checked by its hashes only: the mark's
 * own hash (which only this device can MAC) vouches for the last event,
 * and each event's prev for the one before. After the mark (the one
 * transaction a power cut may leave unmarked), every event must also
 * carry this device's signature.
 */
static int
walk_one(int64_t seq, const char *body, int64_t col_resv,
    const char *col_staff, void *arg)
{
	struct walk *w = arg;
	uint8_t digest[32];
	char hex[65];
	json_t *o;

	o = body == NULL ? NULL : json_loads(body, JSON_REJECT_DUPLICATES,
	    NULL);
	if (seq > w->mseq) {
		if (body == NULL || ledger_verify_next(&w->v, body,
		    strlen(body)) == -1 || w->v.next_seq != seq + 1) {
			w->bad = seq;
			snprintf(w->bad_why, sizeof(w->bad_why), "%s",
			    body == NULL || w->v.error[0] == '\0' ?
			    "stored under another seq than it says" :
			    w->v.error);
			json_decref(o);
			return -1;
		}
		memcpy(digest, w->v.prev, sizeof(digest));
	} else if (!json_is_object(o) || json_integer_value(json_object_get(o,
	    "seq")) != seq || ledger_digest(o, digest) == -1) {
		/* Not even an event: nothing below it can be vouched for. */
		w->brk = seq + 1;
		w->have_prev = 0;
		w->expect = seq + 1;
		json_decref(o);
		return 0;
	} else {
		if (seq != w->expect && !skips(o, seq, w->expect))
			w->brk = seq;
		hex32(w->prev, hex);
		if (w->have_prev && (!json_is_string(json_object_get(o,
		    "prev")) || strcmp(json_string_value(json_object_get(o,
		    "prev")), hex) != 0))
			w->brk = seq;
	}
	memcpy(w->prev, digest, sizeof(digest));
	w->have_prev = 1;
	w->expect = seq + 1;
	w->last = seq;
	collect(w, seq, o, col_resv, col_staff);
	json_decref(o);
	return 0;
}

static int
cmp_resv(const void *a, const void *b)
{
	const struct w_resv *x = a, *y = b;

	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int
cmp_staff(const void *a, const void *b)
{
	const struct w_staff *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	if (c != 0)
		return c;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* A list of [key, seq] pairs of a checkpoint into w's arrays. */
static int
ckpt_lists(struct walk *w, struct mark_head *h)
{
	json_t *a = json_object_get(w->ckpt, "active");
	json_t *s = json_object_get(w->ckpt, "accounts"), *p;
	size_t i;

	if (!json_is_array(a) || !json_is_array(s))
		return -1;
	free(h->ckpt);
	h->nckpt = 0;
	if ((h->ckpt = calloc(json_array_size(a) + 1, sizeof(*h->ckpt))) ==
	    NULL)
		return -1;
	json_array_foreach(a, i, p) {
		if (!json_is_integer(json_array_get(p, 0)) ||
		    !json_is_integer(json_array_get(p, 1)))
			return -1;
		h->ckpt[h->nckpt].id = json_integer_value(json_array_get(p, 0));
		h->ckpt[h->nckpt++].seq = json_integer_value(json_array_get(p,
		    1));
		/* As live as an event of the window at its seq would say. */
		w->resv = grow(w->resv, &w->capresv, w->nresv,
		    sizeof(*w->resv), &w->oom);
		if (w->nresv < w->capresv) {
			w->resv[w->nresv].id = h->ckpt[h->nckpt - 1].id;
			w->resv[w->nresv].seq = h->ckpt[h->nckpt - 1].seq;
			w->resv[w->nresv++].live = 1;
		}
	}
	json_array_foreach(s, i, p) {
		const char *id = json_string_value(json_array_get(p, 0));

		if (id == NULL || strlen(id) >= STAFF_ID_MAX ||
		    !json_is_integer(json_array_get(p, 1)))
			return -1;
		w->staff = grow(w->staff, &w->capstaff, w->nstaff,
		    sizeof(*w->staff), &w->oom);
		if (w->nstaff < w->capstaff) {
			util_strlcpy(w->staff[w->nstaff].id, id, STAFF_ID_MAX);
			w->staff[w->nstaff++].seq =
			    json_integer_value(json_array_get(p, 1));
		}
	}
	return w->oom ? -1 : 0;
}

/* The staff index in the database, for comparison with the ledger. */
struct idx_arg {
	struct w_staff *v;
	size_t n, cap;
	int oom;
};

static int
idx_one(int64_t seq, const char *id, void *arg)
{
	struct idx_arg *ia = arg;

	ia->v = grow(ia->v, &ia->cap, ia->n, sizeof(*ia->v), &ia->oom);
	if (ia->n == ia->cap || id == NULL)
		return ia->oom ? -1 : 0;
	util_strlcpy(ia->v[ia->n].id, id, STAFF_ID_MAX);
	ia->v[ia->n++].seq = seq;
	return 0;
}

static json_t *
finding(const char *record, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A record_rejected alarm's fields. */
static json_t *
finding(const char *record, const char *id, const char *fmt, ...)
{
	char why[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	log_error("ledger: %s %s rejected: %s", record, id, why);
	return json_pack("{s:b, s:s, s:s, s:s}", "alarm", 1, "record", record,
	    "id", id, "reason", why);
}

static void
add(json_t *findings, json_t *x)
{
	if (x != NULL)
		json_array_append_new(findings, x);
}

/*
 * The ledger's newest per account against the database's staff index:
 * rows put back from before a revocation must not look fresh. Corrects
 * the index; returns how many ids needed it, -1 on error.
 */
static int
fix_staff_index(struct lockerd *d, struct w_staff *map, size_t n)
{
	struct idx_arg ia = { NULL, 0, 0, 0 };
	size_t i, j;
	int fixed = 0, rc = 0;

	if (store_staff_seqs(d->store, idx_one, &ia) == -1 || ia.oom) {
		free(ia.v);
		return -1;
	}
	for (i = 0; i < ia.n && rc == 0; i++) {
		for (j = 0; j < n && strcmp(map[j].id, ia.v[i].id) != 0; j++)
			;
		if (j < n && map[j].seq == ia.v[i].seq)
			continue;
		fixed++;
		rc = store_staff_unindex(d->store, ia.v[i].id, j < n ?
		    map[j].seq : 0);
	}
	for (j = 0; j < n && rc == 0; j++) {
		for (i = 0; i < ia.n && strcmp(map[j].id, ia.v[i].id) != 0; i++)
			;
		/* Its newest event indexed as the ledger says, whatever
		 * else was cleared or planted above. */
		if (i < ia.n && ia.v[i].seq == map[j].seq)
			continue;
		if (i == ia.n)
			fixed++;
		rc = store_event_index_set(d->store, map[j].seq, 0, map[j].id);
	}
	free(ia.v);
	return rc == -1 ? -1 : fixed;
}

/* Newest per id, sorted; n updated. Returns the array (reused). */
static size_t
newest_resv(struct w_resv *v, size_t n)
{
	size_t i, k = 0;

	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_resv);
	for (i = 0; i < n; i++)
		if (i + 1 == n || v[i + 1].id != v[i].id)
			v[k++] = v[i];
	return k;
}

static size_t
newest_staff(struct w_staff *v, size_t n)
{
	size_t i, k = 0;

	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_staff);
	for (i = 0; i < n; i++)
		if (i + 1 == n || strcmp(v[i + 1].id, v[i].id) != 0)
			v[k++] = v[i];
	return k;
}

static void
walk_free(struct walk *w)
{
	free(w->resv);
	free(w->staff);
	free(w->fix);
	json_decref(w->ckpt);
}

/*
 * The ledger from the mark's checkpoint (m->ckpt; 1 when full) to its
 * end: verified, its tail after the last good event moved aside, its
 * index columns corrected, and what it says kept in d->head. Findings
 * go to findings (record_rejected alarms, for the caller to record).
 * 0, 1 if the ledger cannot be vouched for (held), -1 on error.
 */
static int
check_ledger(struct lockerd *d, const struct mark *m, int64_t n,
    int upgrade, json_t *findings)
{
	struct mark_head *h = &d->head;
	struct walk w;
	size_t i, nr, ns;
	json_t *o;
	char id[64];
	int64_t before, good;
	int fixed, rc = -1;

	memset(&w, 0, sizeof(w));
	w.d = d;
	w.mseq = m->seq;
	w.from = m->ckpt > 0 ? m->ckpt : 1;
	w.expect = w.from;
	w.have_prev = w.from == 1;
	ledger_verify_init(&w.v, d->keys->sign_pk, m->seq + 1, m->hash);
	do {
		before = w.expect;
		if (store_event_index(d->store, w.expect - 1, 1000, walk_one,
		    &w) == -1)
			goto out;
	} while (!w.bad && w.expect > before && w.expect <= n);
	if (w.oom) {
		log_error("ledger: out of memory checking the ledger");
		goto out;
	}
	/* Only a ledger that never had a mark is adopted for lack of one:
	 * else the mark was removed, and the database may be any copy. */
	if (upgrade && w.marked > 0) {
		hold(d, n, "the ledger's mark %s is missing, but the ledger was "
		    "kept under one (its start at seq %lld says so): it was "
		    "removed", store_mark_path(d->store), (long long)w.marked);
		rc = 1;
		goto out;
	}
	if (w.brk > 0 || (w.from > 1 && w.ckpt == NULL)) {
		hold(d, n, "the database's ledger was edited: the events "
		    "before seq %lld do not chain to the ones after them, up "
		    "to the head this locker last wrote (seq %lld, its mark)",
		    (long long)(w.brk > 0 ? w.brk : w.from + 1),
		    (long long)m->seq);
		rc = 1;
		goto out;
	}
	good = w.last;
	if (store_begin(d->store) == -1)
		goto out;
	if (w.bad > 0) {
		snprintf(id, sizeof(id), "seq %lld-%lld", (long long)w.bad,
		    (long long)n);
		add(findings, finding("event", id, "not written by this locker "
		    "(%s); moved out of the ledger into events_rejected, never "
		    "signed over; the ledger goes on from seq %lld",
		    w.bad_why, (long long)good));
		if (store_event_reject(d->store, w.bad, w.bad_why) == -1)
			goto rollback;
	}
	for (i = 0; i < w.nfix; i++)
		if (store_event_index_set(d->store, w.fix[i].seq,
		    w.fix[i].resv, w.fix[i].has_staff ? w.fix[i].staff :
		    NULL) == -1)
			goto rollback;
	if (w.ckpt != NULL && ckpt_lists(&w, h) == -1) {
		store_rollback(d->store);
		hold(d, n, "the checkpoint at seq %lld cannot be read",
		    (long long)w.from);
		rc = 1;
		goto out;
	}
	ns = newest_staff(w.staff, w.nstaff);
	if ((fixed = fix_staff_index(d, w.staff, ns)) == -1)
		goto rollback;
	/* An upgrade's older steps did not fill the index in (events.staff
	 * came later): filled in, not an alarm. */
	if (upgrade && (w.nfix > 0 || fixed > 0))
		log_info("ledger: the index of %zu events filled in from them",
		    w.nfix + (size_t)fixed);
	else if (w.nfix > 0 || fixed > 0) {
		snprintf(id, sizeof(id), "%zu events", w.nfix + (size_t)fixed);
		add(findings, finding("ledger index", id, "the database's note "
		    "of which reservation or staff account an event is about "
		    "did not match the signed events (edited?); corrected from "
		    "the events"));
	}
	if (store_commit(d->store) == -1)
		goto out;
	/* The reservations the ledger knows as live (load_resv checks). */
	nr = newest_resv(w.resv, w.nresv);
	free(h->live);
	h->nlive = 0;
	if ((h->live = calloc(nr + 1, sizeof(*h->live))) == NULL)
		goto out;
	for (i = 0; i < nr; i++)
		if (w.resv[i].live) {
			h->live[h->nlive].id = w.resv[i].id;
			h->live[h->nlive++].seq = w.resv[i].seq;
		}
	h->win_from = w.from;
	h->seq = h->pend = good;
	if (good > 0)
		memcpy(d->ledger_prev, w.prev, sizeof(d->ledger_prev));
	else
		memset(d->ledger_prev, 0, sizeof(d->ledger_prev));
	/* An event the mark vouches for whose signature is gone. */
	if (good > 0 && good <= m->seq && (o = event_at(d, good)) != NULL) {
		if (ledger_signed_by(o, d->keys->sign_pk) == -1) {
			snprintf(id, sizeof(id), "seq %lld", (long long)good);
			add(findings, finding("event", id, "its signature is "
			    "missing or does not verify (removed in the "
			    "database?); its content is the one this locker "
			    "wrote, as its mark says, and it is not signed "
			    "again"));
		}
		json_decref(o);
	}
	rc = 0;
	goto out;
rollback:
	store_rollback(d->store);
out:
	walk_free(&w);
	return rc;
}

/* The newest events must verify with the key: else it is not ours. */
struct key_arg {
	json_t *ev[8];
	int n;
};

static int
key_one(int64_t seq, const char *body, void *arg)
{
	struct key_arg *ka = arg;
	json_t *o = json_loads(body, 0, NULL);

	(void)seq;
	if (json_is_string(json_object_get(o, "sig")) && ka->n < 8)
		ka->ev[ka->n++] = o;
	else
		json_decref(o);
	return 0;
}

static int
key_check(struct lockerd *d, int64_t n)
{
	struct key_arg ka;
	int i, good = 0;

	memset(&ka, 0, sizeof(ka));
	if (store_events_after(d->store, n > 8 ? n - 8 : 0, 8, key_one, &ka) ==
	    -1)
		return -1;
	/* Newest first: one signature that verifies is enough. */
	for (i = ka.n - 1; i >= 0 && !good; i--)
		good = ledger_signed_by(ka.ev[i], d->keys->sign_pk) == 0;
	for (i = 0; i < ka.n; i++)
		json_decref(ka.ev[i]);
	if (ka.n > 0 && !good) {
		log_error("%s: this key does not verify the ledger of %s: none "
		    "of its newest events (to seq %lld) is signed by it. It is "
		    "not this locker's key: restore the key file that belongs "
		    "to this database (the platform knows this locker's "
		    "public key; compare it with lockerd --public-key)",
		    d->cfg.key_file, d->cfg.database, (long long)n);
		return -1;
	}
	return 0;
}

static int
record_findings(struct lockerd *d, json_t *findings)
{
	size_t i;
	json_t *x;

	json_array_foreach(findings, i, x)
		if (lockerd_record(d, "record_rejected", x) == -1)
			log_error("could not record a rejected record");
	return 0;
}

/*
 * Adoption: the whole ledger verified as if the mark were at 0, for a
 * ledger written before the mark (upgrade) or on a restore_ack.
 */
static int
adopt(struct lockerd *d, int64_t n, int upgrade, json_t *findings)
{
	struct mark zero;
	int rc;

	memset(&zero, 0, sizeof(zero));
	if ((rc = check_ledger(d, &zero, n, upgrade, findings)) != 0)
		return rc;
	d->head.dirty = 1;
	d->head.m.ckpt = 0;
	return 0;
}

int
mark_start(struct lockerd *d)
{
	struct mark_head *h = &d->head;
	int64_t n = store_event_last(d->store), b = 0;
	uint8_t digest[32];
	json_t *findings;
	int have, rc = 0;
	char hex[65];

	memset(d->ledger_prev, 0, sizeof(d->ledger_prev));
	h->seq = h->pend = 0;
	h->held[0] = '\0';
	h->sync_ms = MARK_SYNC_MS;
	h->delay_ms = MARK_DELAY_MS;
	if (n < 0 || (n > 0 && key_check(d, n) == -1))
		return -1;
	if ((have = mark_read(d, &h->m, &h->synced_slot)) == -1)
		return -1;
	if (have == 0 && h->m.boot >= d->boot) {
		/* A database from before: cell revs must not go back. */
		if ((b = store_boot_raise(d->store, h->m.boot + 1)) == -1)
			return -1;
		d->boot = b;
	}
	if (n == 0 && (have != 0 || h->m.seq == 0)) {
		/* A first start (or a power cut before any event landed):
		 * the mark exists before the first event does. */
		uint64_t gen = have == 0 ? h->m.gen : 0;

		/* The slots' generations go on: the newer one stays newer. */
		memset(&h->m, 0, sizeof(h->m));
		h->m.gen = gen;
		h->dirty = h->ready = 1;
		if (store_meta_take(d->store, "mark_adopt") == -1)
			return -1;
		return mark_flush(d, 0);
	}
	if ((findings = json_array()) == NULL)
		return -1;
	if (have == 1 && store_meta_has(d->store, "mark_adopt") == 1) {
		log_info("ledger: %lld events written before this locker kept "
		    "a mark: verifying the whole chain once", (long long)n);
		memset(&h->m, 0, sizeof(h->m));
		if ((rc = adopt(d, n, 1, findings)) == 0 &&
		    (rc = store_meta_take(d->store, "mark_adopt")) == 1) {
			rc = 0;
			log_info("ledger: adopted, head seq %lld",
			    (long long)h->seq);
		}
	} else if (have == 1)
		hold(d, n, "the ledger's mark %s is missing, but the database "
		    "%s holds %lld events: it is not the database this locker "
		    "last ran on, or its mark was removed",
		    store_mark_path(d->store), d->cfg.database, (long long)n);
	else if (have == 2)
		hold(d, n, "the ledger's mark %s does not verify with this "
		    "locker's key (edited, or the key file's hash_key is not "
		    "this locker's)", store_mark_path(d->store));
	else if (n < h->m.seq)
		hold(d, n, "the database %s ends at seq %lld, behind this "
		    "locker's last known head, seq %lld (its mark): a restored "
		    "backup, or events deleted from its end",
		    d->cfg.database, (long long)n, (long long)h->m.seq);
	else if (digest_at(d, h->m.seq, digest) != 0 ||
	    !codes_equal(digest, h->m.hash, sizeof(digest))) {
		hex32(h->m.hash, hex);
		hold(d, n, "the database %s does not hold the event this "
		    "locker last wrote at seq %lld (its mark: hash %.16s...): "
		    "it is another database, or that event was edited",
		    d->cfg.database, (long long)h->m.seq, hex);
	} else if ((rc = check_ledger(d, &h->m, n, 0, findings)) == 0) {
		/* Delivered marks beyond the mark's are sent again. After a
		 * clean stop the mark is exact: any there were edited in. */
		if ((b = store_delivered_reset(d->store, h->m.delivered)) > 0 &&
		    h->m.clean) {
			snprintf(hex, sizeof(hex), "%lld events", (long long)b);
			add(findings, finding("delivered marks", hex, "marked "
			    "delivered in the database after seq %lld, the "
			    "last one this locker saw acknowledged (its mark); "
			    "they are sent again", (long long)h->m.delivered));
		}
		h->dirty = 1;
	}
	if (rc == -1 || b == -1) {
		json_decref(findings);
		return -1;
	}
	if (h->held[0] == '\0') {
		h->ready = 1;
		record_findings(d, findings);
		if (mark_flush(d, 0) == -1) {
			json_decref(findings);
			return -1;
		}
	}
	json_decref(findings);
	return 0;
}

/* ---- While running -------------------------------------------------- */

struct ckpt_arg {
	json_t *list;
};

static int
ckpt_staff(int64_t seq, const char *id, void *arg)
{
	struct ckpt_arg *ca = arg;

	return json_array_append_new(ca->list, json_pack("[s, I]", id,
	    (json_int_t)seq)) == 0 ? 0 : -1;
}

/*
 * A checkpoint event: every active reservation with its newest event,
 * every staff account with its newest staff event. The next start
 * verifies the ledger from here on, not from seq 1.
 */
static int
checkpoint(struct lockerd *d)
{
	struct ckpt_arg ca;
	json_t *x, *active;
	int i, rc;

	if ((x = json_object()) == NULL || (active = json_array()) == NULL ||
	    (ca.list = json_array()) == NULL) {
		json_decref(x);
		return -1;
	}
	json_object_set_new(x, "active", active);
	json_object_set_new(x, "accounts", ca.list);
	for (i = 0; i < d->resv.n; i++)
		if (d->resv.r[i].id != 0)
			json_array_append_new(active, json_pack("[I, I]",
			    (json_int_t)d->resv.r[i].id,
			    (json_int_t)d->resv.r[i].last_seq));
	rc = store_staff_seqs(d->store, ckpt_staff, &ca) == 0 ?
	    lockerd_record(d, "checkpoint", x) : -1;
	json_decref(x);
	if (rc == 0)
		d->head.m.ckpt = d->head.seq;
	return rc;
}

void
mark_tick(struct lockerd *d)
{
	struct mark_head *h = &d->head;

	if (h->held[0] != '\0')
		return;
	/* A moment after the commit, so that the turn that pulsed a relay
	 * hands the CPU to the bus thread first; commits close together
	 * share the write. */
	if (h->dirty && util_mono_ms() - h->dirty_ms < h->delay_ms)
		return;
	if (h->seq - h->m.ckpt >= MARK_CKPT_EVERY && checkpoint(d) == -1)
		log_error("ledger: could not write a checkpoint");
	mark_flush(d, 0);
}

int64_t
mark_resv_expected(struct lockerd *d, int64_t id)
{
	struct mark_head *h = &d->head;
	int64_t last = store_resv_last_event(d->store, id);
	int i;

	/* From the verified window on, the index was checked at start. */
	if (last == -1 || last >= h->win_from)
		return last;
	for (i = 0; i < h->nckpt; i++)
		if (h->ckpt[i].id == id)
			return h->ckpt[i].seq;
	return 0;
}

json_t *
mark_status(struct lockerd *d)
{
	struct mark_head *h = &d->head;
	char hex[65];
	json_t *o;

	hex32(d->ledger_prev, hex);
	o = json_pack("{s:I, s:s}", "head_seq", (json_int_t)h->seq, "head",
	    hex);
	if (o != NULL && h->held[0] != '\0') {
		json_object_set_new(o, "held", json_string(h->held));
		json_object_set_new(o, "mark_seq", json_integer(h->m.seq));
	}
	return o;
}

static json_t *
refused(const char *field, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static json_t *
refused(const char *field, const char *fmt, ...)
{
	char why[300];
	va_list ap;
	json_t *o;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	o = json_pack("{s:b, s:s, s:s}", "ok", 0, "error", "refused",
	    "reason", why);
	if (o != NULL && field != NULL)
		json_object_set_new(o, "field", json_string(field));
	return o;
}

json_t *
mark_restore(struct lockerd *d, json_t *c)
{
	struct mark_head *h = &d->head;
	const char *locker = json_string_value(json_object_get(c, "locker"));
	const char *head = json_string_value(json_object_get(c, "db_head"));
	int64_t dbseq = json_integer_value(json_object_get(c, "db_seq"));
	int64_t seq = json_integer_value(json_object_get(c, "seq"));
	int64_t mseq = h->m.seq, from;
	char hex[65], reason[sizeof(h->held)];
	json_t *findings, *x;
	int i, n = 0, rc;

	if (h->held[0] == '\0')
		return refused(NULL, "this locker is not held: its database "
		    "agrees with its mark, nothing to acknowledge");
	if (locker == NULL || strcmp(locker, d->cfg.locker_id) != 0)
		return refused("locker", "this is locker %s", d->cfg.locker_id);
	hex32(d->ledger_prev, hex);
	if (dbseq != h->seq || head == NULL || strcmp(head, hex) != 0)
		return refused("db_head", "this locker's database ends at seq "
		    "%lld, head %s: the acknowledgement is for another state",
		    (long long)h->seq, hex);
	if (seq < h->seq)
		return refused("seq", "the platform's last seq cannot be before "
		    "the database's head, seq %lld", (long long)h->seq);
	if ((findings = json_array()) == NULL)
		return NULL;
	util_strlcpy(reason, h->held, sizeof(reason));
	h->held[0] = '\0';
	h->ready = 1;
	log_warn("ledger: restore_ack %s: resuming after seq %lld on the "
	    "database as it is (head seq %lld)", json_string_value(
	    json_object_get(c, "request_id")), (long long)seq,
	    (long long)dbseq);
	if ((rc = adopt(d, dbseq, 0, findings)) != 0) {
		json_decref(findings);
		if (h->held[0] == '\0')
			util_strlcpy(h->held, reason, sizeof(h->held));
		return refused(NULL, "the database cannot be adopted (see the "
		    "locker's log); still held");
	}
	from = h->seq;
	x = json_pack("{s:b, s:I, s:I, s:s, s:s}", "alarm", 1, "from_seq",
	    (json_int_t)from, "mark_seq", (json_int_t)mseq, "request_id",
	    json_string_value(json_object_get(c, "request_id")), "reason",
	    reason);
	rc = x != NULL ? lockerd_record_from(d, "restored", x, seq + 1) : -1;
	json_decref(x);
	if (rc == -1) {
		json_decref(findings);
		util_strlcpy(h->held, reason, sizeof(h->held));
		return refused(NULL, "the restore could not be recorded; still "
		    "held");
	}
	h->m.ckpt = 0;
	record_findings(d, findings);
	json_decref(findings);
	mark_flush(d, 0);
	if (lockerd_load_resv(d) == -1)
		log_error("ledger: the reservations could not be re-read");
	x = json_pack("{s:I, s:s, s:I, s:b}", "boot", (json_int_t)d->boot,
	    "version", LOCKERD_VERSION, "mark_seq", (json_int_t)mseq,
	    "restored", 1);
	if (x == NULL || lockerd_record(d, "started", x) == -1)
		log_error("ledger: could not record the start");
	json_decref(x);
	/* No code from before the restore opens a door: each live one is
	 * replaced, and the new one reaches the platform in its event. */
	for (i = 0; i < d->resv.n; i++)
		if (d->resv.r[i].id != 0)
			n += lockerd_reissue(d, d->resv.r[i].id) == 0;
	mark_tick(d);
	notify_status("running; locker %s, restored", d->cfg.locker_id);
	log_info("ledger: resumed at seq %lld after seq %lld; %d live codes "
	    "replaced", (long long)seq + 1, (long long)from, n);
	return json_pack("{s:b, s:I, s:I, s:i}", "ok", 1, "resumed",
	    (json_int_t)seq + 1, "from_seq", (json_int_t)from, "reissued", n);
}

int
mark_verify(struct lockerd *d, int64_t last, const uint8_t digest[32],
    char *why, size_t whylen)
{
	uint8_t at[32];
	struct mark m;
	int rc, which;

	if ((rc = mark_read(d, &m, &which)) == -1) {
		snprintf(why, whylen, "the mark %s cannot be read",
		    store_mark_path(d->store));
		return -1;
	}
	if (rc == 1) {
		if (last == 0 || store_meta_has(d->store, "mark_adopt") == 1) {
			snprintf(why, whylen, "no mark yet");
			return 0;
		}
		snprintf(why, whylen, "the ledger's mark %s is missing: "
		    "whether events were cut from the end cannot be told",
		    store_mark_path(d->store));
		return -1;
	}
	if (rc == 2) {
		snprintf(why, whylen, "the ledger's mark %s does not verify "
		    "with this key", store_mark_path(d->store));
		return -1;
	}
	if (last < m.seq) {
		snprintf(why, whylen, "the database ends at seq %lld, behind "
		    "the locker's mark at seq %lld: a restored backup, or "
		    "events deleted from its end", (long long)last,
		    (long long)m.seq);
		return -1;
	}
	if (m.seq > 0 && (last == m.seq ? memcmp(digest, m.hash, 32) != 0 :
	    digest_at(d, m.seq, at) != 0 || memcmp(at, m.hash, 32) != 0)) {
		snprintf(why, whylen, "seq %lld is not the event the locker "
		    "wrote there (its mark says otherwise)", (long long)m.seq);
		return -1;
	}
	snprintf(why, whylen, "its mark (seq %lld) agrees", (long long)m.seq);
	return 0;
}

void
mark_free(struct lockerd *d)
{
	free(d->head.ckpt);
	free(d->head.live);
	d->head.ckpt = d->head.live = NULL;
	d->head.nckpt = d->head.nlive = 0;
}
