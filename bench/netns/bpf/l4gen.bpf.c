// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0
// L3/L4 load generator for the netns bench: run by BPF_PROG_TEST_RUN in live-frames mode
// (BPF_F_TEST_XDP_LIVE_FRAMES) from the client namespace. Every run rewrites the whole
// Ethernet/IPv4/UDP header from the template in `gen_cfg` (live-frames pages are recycled carrying
// the forwarder's rewrites: TTL, MACs, SNAT), sets the next source port of the flow cycle and
// XDP_REDIRECTs the frame into the client veth.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define HDR_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

struct gen_cfg {
	__u8 hdr[48];      // Ethernet + IPv4 + UDP header (42 bytes used), checksums precomputed
	__u32 ifindex;     // redirect target: the client veth
	__u32 nflows;      // source ports cycle over sport_base .. sport_base + nflows - 1
	__u32 sport_base;
	__u32 every;       // > 1: send only every n-th run, XDP_DROP the others (even pacing)
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gen_cfg SEC(".maps");

// [0] = flow cursor, [1] = frames generated, [2] = pacing skip count (per CPU).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} gen_state SEC(".maps");

SEC("xdp")
int l4gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 k0 = 0, k1 = 1, k2 = 2;

	if (data + HDR_LEN > data_end)
		return XDP_ABORTED;
	struct gen_cfg *cfg = bpf_map_lookup_elem(&gen_cfg, &k0);
	__u64 *cursor = bpf_map_lookup_elem(&gen_state, &k0);
	__u64 *frames = bpf_map_lookup_elem(&gen_state, &k1);
	__u64 *skip = bpf_map_lookup_elem(&gen_state, &k2);
	if (!cfg || !cursor || !frames || !skip || cfg->nflows == 0)
		return XDP_ABORTED;
	if (cfg->every > 1) {
		if (++*skip < cfg->every)
			return XDP_DROP;
		*skip = 0;
	}

	__builtin_memcpy(data, cfg->hdr, HDR_LEN);
	__u64 flow = *cursor;
	*cursor = flow + 1 >= cfg->nflows ? 0 : flow + 1;
	*frames += 1;

	struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	udp->source = bpf_htons((__u16)(cfg->sport_base + flow));
	// The UDP checksum stays 0 (none, legal for IPv4); the IPv4 checksum does not cover ports.
	return bpf_redirect(cfg->ifindex, 0);
}

char _license[] SEC("license") = "Dual BSD/GPL";
