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
 * A plain preallocated hash, not an LRU one: LRU maintenance costs every
 * update a list operation under a lock, on the hot path of every request.
 * It stays bounded without eviction because its keys are request
 * addresses, and blk-mq preallocates a fixed set of requests per queue
 * (tags); an entry left behind (a request merged away after insert) is
 * overwritten when its address is reused.
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
 * Fills the key from the request; 0 when the request is not one we count.
 * tp_btf arguments are typed kernel pointers: plain loads (CO-RE relocated
 * through vmlinux.h's preserve_access_index) instead of a probe-read helper
 * call per field, which is most of the cost on a fast device.
 */
static __always_inline int request_key(struct request *rq, struct iogate_key *key)
{
	struct bio *bio = rq->bio;
	__u32 op = rq->cmd_flags & REQ_OP_MASK;
	struct gendisk *disk;

	/* Flushes and passthrough commands carry no bio, and move no data. */
	if (!bio)
		return 0;
	if (op == REQ_OP_READ)
		key->dir = IOGATE_DIR_READ;
	else if (op == REQ_OP_WRITE)
		key->dir = IOGATE_DIR_WRITE;
	else
		return 0;
	key->cgroup_id = bio->bi_blkg->blkcg->css.cgroup->kn->id;
	disk = rq->q->disk;
	key->dev = (__u32)disk->major << IOGATE_MINOR_BITS | (__u32)disk->first_minor;
	return 1;
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
	struct iogate_stats *s = bpf_map_lookup_elem(&stats, key);

	if (s)
		return s;
	/* Zero-initialised from a static so the 900-byte value is not on the stack. */
	static const struct iogate_stats zero = {};
	bpf_map_update_elem(&stats, key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&stats, key);
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(block_rq_insert, struct request *rq)
{
	struct inflight f = {};
	__u64 id = (__u64)rq;

	if (!request_key(rq, &f.key))
		return 0;
	f.insert_ns = bpf_ktime_get_ns();
	/* On failure the issue creates the entry: only the queue time is lost. */
	bpf_map_update_elem(&inflight, &id, &f, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	__u64 id = (__u64)rq;
	__u64 now = bpf_ktime_get_ns();
	struct inflight *known = bpf_map_lookup_elem(&inflight, &id);
	struct inflight f = {};

	/*
	 * An entry from this request's insert (a requeued request is inserted
	 * and issued again: the last issue is the one the disk served). An
	 * entry older than the request's allocation is left over from an
	 * earlier request at the same address (merged away, or its delete
	 * failed) and is replaced.
	 */
	if (known && known->insert_ns && known->insert_ns >= rq->start_time_ns) {
		known->issue_ns = now;
		return 0;
	}
	if (!request_key(rq, &f.key))
		return 0;
	f.issue_ns = now;
	track_issued(&id, &f);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 id = (__u64)rq;
	struct inflight *f = bpf_map_lookup_elem(&inflight, &id);
	struct iogate_stats *s;
	__u64 now, start;
	/* The tracepoint fires before the request is updated: this is what was left. */
	unsigned int remaining = rq->__data_len;

	/* Not seen issued (in flight when we attached, or not a read/write). */
	if (!f || !f->issue_ns)
		return 0;
	s = stats_for(&f->key);
	if (!s)
		return 0;
	now = bpf_ktime_get_ns();
	__sync_fetch_and_add(&s->bytes, nr_bytes < remaining ? nr_bytes : remaining);
	if (nr_bytes < remaining)
		return 0;

	__sync_fetch_and_add(&s->ops, 1);
	__sync_fetch_and_add(&s->disk_ns, now - f->issue_ns);
	hist_add(s->disk_hist, now - f->issue_ns);
	start = f->issue_ns;
	if (f->insert_ns && f->insert_ns <= f->issue_ns) {
		__sync_fetch_and_add(&s->queued_ops, 1);
		__sync_fetch_and_add(&s->queue_ns, f->issue_ns - f->insert_ns);
		hist_add(s->queue_hist, f->issue_ns - f->insert_ns);
		start = f->insert_ns;
	}
	hist_add(s->total_hist, now - start);
	/* Should the delete fail (bucket lock busy in a nested context), the
	 * entry must not pass for a live one when the address is reused. */
	f->insert_ns = 0;
	f->issue_ns = 0;
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
