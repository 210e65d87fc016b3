// SPDX-License-Identifier: GPL-2.0
/*
 * Per-cgroup, per-disk, per-direction block-I/O counters and latency
 * histograms from the block request tracepoints.
 *
 * A request's life: insert (into the I/O scheduler or a software queue;
 * absent for requests issued directly) -> issue (to the driver) -> complete
 * (possibly in several partial steps). The cgroup is the one the I/O is
 * charged to (the bio's blkcg), not the task running when a tracepoint
 * fires, so writeback and loop/kworker completions land on the right pod.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "iogate.h"

/* Not in BTF: a macro in include/linux/blk_types.h. */
#define REQ_OP_BITS 8
#define REQ_OP_MASK ((1 << REQ_OP_BITS) - 1)

struct inflight {
	__u64 insert_ns; /* 0: not seen (issued directly, or inserted before we attached) */
	__u64 issue_ns;  /* 0: not issued yet */
	struct iogate_key key;
};

/*
 * Where a request's times wait between its tracepoints: first a slot of a
 * plain array, chosen by the request's tag and claimed with a
 * compare-and-swap; a request whose slot another live request holds goes
 * to the hash map below. An array slot is a bounds check and one atomic
 * where a hash entry is a hash, a bucket lock and a free-list operation on
 * insert and again on delete: on a fast device that was most of the
 * program's cost (docs/benchmarks.md).
 *
 * A slot left claimed by a request that never completes (merged away after
 * insert) is taken back when blk-mq hands out that tag again: a tag always
 * comes with the same preallocated request, whose address is the claim,
 * and an entry older than the request's allocation is started afresh.
 */
#define SLOT_BITS 14

struct slot {
	__u64 rq; /* the claiming request's address; 0: free */
	struct inflight f;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << SLOT_BITS);
	__type(key, __u32);
	__type(value, struct slot);
} slots SEC(".maps");

/*
 * The overflow, a plain preallocated hash rather than an LRU one: LRU
 * maintenance costs every update a list operation under a lock. It stays
 * bounded without eviction because its keys are request addresses, and
 * blk-mq preallocates a fixed set of requests per queue (tags); an entry
 * left behind (a request merged away after insert) is overwritten when its
 * address is reused.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct request * */
	__type(value, struct inflight);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct iogate_key);
	__type(value, struct iogate_stats);
} stats SEC(".maps");

/*
 * Requests we could not start tracking: the in-flight map refused the entry
 * (its bucket lock was held by the context this program interrupted on the
 * same CPU, so the kernel answers -EBUSY rather than deadlock). Their
 * completion is not counted; userspace reports how many there were.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} untracked SEC(".maps");

/*
 * A request's slot follows from its tag, which blk-mq keeps for the
 * request's whole life: the scheduler's tag when a scheduler holds it (the
 * driver's is only assigned at dispatch), else the driver's. The verifier
 * allows no arithmetic on the request pointer itself. Fibonacci hashing
 * spreads queues, hardware contexts and tags over the array.
 */
static __always_inline struct slot *slot_of(struct request *rq)
{
	int tag = rq->internal_tag >= 0 ? rq->internal_tag : rq->tag;
	__u64 who = (__u64)(__u32)rq->q->id << 32 | (__u64)(rq->mq_hctx->queue_num & 0xffff) << 16 |
		    (__u16)tag;
	__u32 idx = (__u32)((who * 0x9E3779B97F4A7C15ULL) >> (64 - SLOT_BITS));

	return bpf_map_lookup_elem(&slots, &idx);
}

/* The request's slot, claiming it when free; NULL when another holds it. */
static __always_inline struct inflight *claim_slot(struct request *rq, __u64 id)
{
	struct slot *s = slot_of(rq);

	if (!s)
		return NULL;
	if (s->rq == id || __sync_val_compare_and_swap(&s->rq, 0, id) == 0)
		return &s->f;
	return NULL;
}

/* The request's slot only if it holds one. */
static __always_inline struct slot *held_slot(struct request *rq, __u64 id)
{
	struct slot *s = slot_of(rq);

	return s && s->rq == id ? s : NULL;
}

static __always_inline void track_issued(__u64 *id, struct inflight *f)
{
	__u32 zero = 0;
	__u64 *n;

	if (bpf_map_update_elem(&inflight, id, f, BPF_ANY) == 0)
		return;
	n = bpf_map_lookup_elem(&untracked, &zero);
	if (n)
		*n += 1;
}

/*
 * Fills the key for I/O of type `op` that `bio` charges to its cgroup on
 * `disk`; 0 for an operation we do not count (only reads and writes move
 * data). tp_btf and fentry arguments are typed kernel pointers: plain
 * loads (CO-RE relocated through vmlinux.h's preserve_access_index)
 * instead of a probe-read helper call per field, which is most of the
 * cost on a fast device.
 */
static __always_inline int fill_key(struct iogate_key *key, __u32 op, struct bio *bio, struct gendisk *disk)
{
	if (op == REQ_OP_READ)
		key->dir = IOGATE_DIR_READ;
	else if (op == REQ_OP_WRITE)
		key->dir = IOGATE_DIR_WRITE;
	else
		return 0;
	key->cgroup_id = bio->bi_blkg->blkcg->css.cgroup->kn->id;
	key->dev = (__u32)disk->major << IOGATE_MINOR_BITS | (__u32)disk->first_minor;
	return 1;
}

static __always_inline int request_key(struct request *rq, struct iogate_key *key)
{
	/* Flushes and passthrough commands carry no bio, and move no data. */
	if (!rq->bio)
		return 0;
	return fill_key(key, rq->cmd_flags & REQ_OP_MASK, rq->bio, rq->q->disk);
}

/*
 * The value under `key` in a hash map, made from `zero` if absent. A
 * static `zero` keeps a large value (900 bytes of stats) off the stack.
 */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *zero)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v)
		return v;
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

static __always_inline __u32 log2_bucket(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	if (r > IOGATE_BUCKETS - 1)
		r = IOGATE_BUCKETS - 1;
	return r;
}

static __always_inline void hist_add(__u64 *hist, __u64 ns)
{
	__u32 b = log2_bucket(ns);

	/* Re-bounded here so the verifier sees the index limit at the access. */
	if (b < IOGATE_BUCKETS)
		__sync_fetch_and_add(&hist[b], 1);
}

static __always_inline struct iogate_stats *stats_for(struct iogate_key *key)
{
	static const struct iogate_stats zero = {};

	return lookup_or_init(&stats, key, &zero);
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(block_rq_insert, struct request *rq)
{
	struct inflight f = {};
	struct inflight *slot;
	__u64 id = (__u64)rq;

	if (!request_key(rq, &f.key))
		return 0;
	f.insert_ns = bpf_ktime_get_ns();
	slot = claim_slot(rq, id);
	if (slot) {
		*slot = f;
		return 0;
	}
	/* On failure the issue creates the entry: only the queue time is lost. */
	bpf_map_update_elem(&inflight, &id, &f, BPF_ANY);
	return 0;
}

/* An entry from this request's insert, not one left by an earlier request
 * at the same address (merged away after insert): those are older than the
 * request's allocation. */
static __always_inline int inserted_now(struct inflight *f, struct request *rq)
{
	return f->insert_ns && f->insert_ns >= rq->start_time_ns;
}

/* An entry from this request's life, by its first time. */
static __always_inline int from_this_request(struct inflight *f, struct request *rq)
{
	__u64 first = f->insert_ns ? f->insert_ns : f->issue_ns;

	return first && first >= rq->start_time_ns;
}

/*
 * Set by the loader (EbpfSource's IssueStamps::Own): stamp every issue on
 * the program's clock, ignoring the kernel's. Read-only once loaded, so the
 * verifier drops the branch not taken.
 */
const volatile __u32 own_issue_stamps = 0;

/*
 * Whether the kernel stamps this request's issue itself, in
 * rq->io_start_time_ns, so that the issue needs no program of ours: it does
 * on queues that keep block statistics (QUEUE_FLAG_STATS), which writeback
 * throttling turns on, and wbt is on by default for most disks; so do
 * io.latency and io.cost. The flag's bit differs between kernels, in an
 * enum CO-RE cannot name, so this tests what sets it: an accounting user
 * or a statistics callback on the queue. Should it change between this
 * test and the stamp, the completion finds neither time and counts nothing.
 */
static __always_inline int kernel_stamps_issue(struct request *rq)
{
	struct blk_queue_stats *st = rq->q->stats;

	if (own_issue_stamps)
		return 0;

	return st && (st->accounting || st->callbacks.next != &st->callbacks);
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	__u64 id = (__u64)rq;
	__u64 now;
	struct slot *held;
	struct inflight f = {};
	struct inflight *entry;

	held = held_slot(rq, id);
	/* An inserted request's queue time is measured on one clock, ours:
	 * the kernel's stamp can be older than our insert, as it reuses one
	 * reading for a whole plug (a batch submission). A requeued request is
	 * inserted and issued again: the last issue is the one the disk served. */
	if (held && inserted_now(&held->f, rq)) {
		held->f.issue_ns = bpf_ktime_get_ns();
		return 0;
	}
	if (kernel_stamps_issue(rq))
		return 0;
	now = bpf_ktime_get_ns();
	if (!request_key(rq, &f.key))
		return 0;
	f.issue_ns = now;
	entry = held ? &held->f : claim_slot(rq, id);
	if (entry) {
		*entry = f;
		return 0;
	}
	/* Another request holds the slot; the insert, if any, went to the hash
	 * (should the slot have been freed in between, the queue time is lost). */
	entry = bpf_map_lookup_elem(&inflight, &id);
	if (entry && inserted_now(entry, rq)) {
		entry->issue_ns = now;
		return 0;
	}
	track_issued(&id, &f);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 id = (__u64)rq;
	/* 0 when the kernel did not stamp the issue (kernel_stamps_issue). */
	__u64 stamped = own_issue_stamps ? 0 : rq->io_start_time_ns;
	struct slot *held = held_slot(rq, id);
	struct inflight *f = held ? &held->f : NULL;
	struct iogate_key key = {};
	struct iogate_stats *s;
	__u64 now, issue, start;
	/* The tracepoint fires before the request is updated: this is what was left. */
	unsigned int remaining = rq->__data_len;

	/* Only a request whose slot was taken at insert or issue is in the
	 * hash; where the kernel stamps issues, only one that was inserted,
	 * and requests on a queue without a scheduler rarely are. */
	if (!f && (!stamped || rq->internal_tag >= 0))
		f = bpf_map_lookup_elem(&inflight, &id);
	if (f && !from_this_request(f, rq))
		f = NULL;
	issue = f && f->issue_ns ? f->issue_ns : stamped;
	/* Not seen issued (in flight when we attached, or not a read/write). */
	if (!issue)
		return 0;
	if (f)
		key = f->key;
	else if (!request_key(rq, &key))
		return 0;
	s = stats_for(&key);
	if (!s)
		return 0;
	now = bpf_ktime_get_ns();
	__sync_fetch_and_add(&s->bytes, nr_bytes < remaining ? nr_bytes : remaining);
	if (nr_bytes < remaining)
		return 0;

	__sync_fetch_and_add(&s->ops, 1);
	__sync_fetch_and_add(&s->disk_ns, now - issue);
	hist_add(s->disk_hist, now - issue);
	start = issue;
	if (f && f->insert_ns && f->insert_ns <= issue) {
		__sync_fetch_and_add(&s->queued_ops, 1);
		__sync_fetch_and_add(&s->queue_ns, issue - f->insert_ns);
		hist_add(s->queue_hist, issue - f->insert_ns);
		start = f->insert_ns;
	}
	hist_add(s->total_hist, now - start);
	if (f) {
		f->insert_ns = 0;
		f->issue_ns = 0;
	}
	if (held) {
		/* A full barrier: the next claimer's writes must not precede the
		 * clears above (a plain store would do on x86, not on arm64). */
		__sync_val_compare_and_swap(&held->rq, id, 0);
		return 0;
	}
	/* Should the delete fail (bucket lock busy in a nested context), the
	 * entry must not pass for a live one when the address is reused:
	 * hence the clears above. */
	if (f)
		bpf_map_delete_elem(&inflight, &id);
	return 0;
}

/*
 * The wait blk-throttle imposes: no tracepoint fires before it (a held bio
 * reaches block_bio_queue only once released), so two fentry programs
 * bracket it. throtl_add_bio_tg queues a bio that is over its group's limit
 * (and queues it again on each parent group it climbs to: the first time
 * is kept); the dispatch worker releases it through
 * submit_bio_noacct_nocheck, which every other bio passes too, so that
 * program looks a bio up only while some bio is held (held_bios). Kernels
 * that refuse fentry (lockdown) or lack either function load neither
 * program: the sidecar then says the wait is unavailable.
 */
struct held {
	__u64 since;
	struct iogate_key key;
};

/* An LRU: a held bio whose release is never seen (freed on an error path)
 * must not fill the map for good. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct bio * */
	__type(value, struct held);
} held SEC(".maps");

/* Bios in `held`, give or take an eviction: 0 keeps the release program to
 * one array read on the common path. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} held_bios SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct iogate_key);
	__type(value, struct iogate_throttle);
} throttle SEC(".maps");

static __always_inline int bio_key(struct bio *bio, struct iogate_key *key)
{
	return fill_key(key, bio->bi_opf & REQ_OP_MASK, bio, bio->bi_bdev->bd_disk);
}

SEC("fentry/throtl_add_bio_tg")
int BPF_PROG(throttle_hold, struct bio *bio)
{
	struct held h = {};
	__u64 id = (__u64)bio;
	__u32 zero = 0;
	__u64 *n;

	if (!bio_key(bio, &h.key))
		return 0;
	h.since = bpf_ktime_get_ns();
	/* Fails with -EEXIST when a child group queued it first. */
	if (bpf_map_update_elem(&held, &id, &h, BPF_NOEXIST) != 0)
		return 0;
	n = bpf_map_lookup_elem(&held_bios, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

SEC("fentry/submit_bio_noacct_nocheck")
int BPF_PROG(throttle_release, struct bio *bio)
{
	static const struct iogate_throttle zero_t = {};
	__u64 id = (__u64)bio;
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&held_bios, &zero);
	struct iogate_throttle *t;
	struct held *h;
	struct iogate_key key;
	__u64 wait;

	if (!n || !*n)
		return 0;
	h = bpf_map_lookup_elem(&held, &id);
	if (!h)
		return 0;
	wait = bpf_ktime_get_ns() - h->since;
	key = h->key;
	if (bpf_map_delete_elem(&held, &id) == 0 && *n > 0)
		__sync_fetch_and_add(n, -1);
	t = lookup_or_init(&throttle, &key, &zero_t);
	if (!t)
		return 0;
	__sync_fetch_and_add(&t->bios, 1);
	__sync_fetch_and_add(&t->wait_ns, wait);
	hist_add(t->wait_hist, wait);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
