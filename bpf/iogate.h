/* Layouts shared by the eBPF program and the Rust side (metrics-sidecar/src/ebpf/maps.rs
 * mirrors them with #[repr(C)]; a size assertion there catches drift). */
#ifndef IOGATE_H
#define IOGATE_H

#define IOGATE_BUCKETS 36

#define IOGATE_DIR_READ 0
#define IOGATE_DIR_WRITE 1

/* The kernel's own dev_t packing (MKDEV): 12 bits of major, 20 of minor. */
#define IOGATE_MINOR_BITS 20

struct iogate_key {
	__u64 cgroup_id; /* kernfs id of the blkcg's cgroup; 0 when the bio has no blkcg */
	__u32 dev;       /* major << 20 | minor of the whole disk */
	__u32 dir;       /* IOGATE_DIR_* */
};

struct iogate_stats {
	__u64 ops;
	__u64 bytes;
	__u64 queued_ops;
	__u64 queue_ns;
	__u64 disk_ns;
	__u64 total_hist[IOGATE_BUCKETS];
	__u64 queue_hist[IOGATE_BUCKETS];
	__u64 disk_hist[IOGATE_BUCKETS];
};

/* Per key: bios blk-throttle held back, and how long (throttle_* programs). */
struct iogate_throttle {
	__u64 bios;
	__u64 wait_ns;
	__u64 wait_hist[IOGATE_BUCKETS];
};

#endif
