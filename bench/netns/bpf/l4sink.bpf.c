// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0
// Sink of the L3/L4 netns bench, attached in native mode to the server veth (and, as the reply
// catcher, to the client veth). Counts IPv4/UDP frames and drops them; counts the ones whose source
// is the firewall's SNAT address, and the distinct flows seen. With `reply` set it answers each frame
// instead (1: addresses and ports swapped, XDP_TX; 2: passed to the stack, where l4sink's UDP echo
// socket answers): that primes conntrack for the `est` flow mode. On veth, XDP_TX after the skb path
// loses most frames (xdp_tx_errors), so the driver uses 2.
// Everything that is not IPv4/UDP (ARP, ...) goes to the stack.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct sink_cfg {
	__u32 snat_addr;   // network byte order; 0 = none
	__u32 reply;       // 1 = answer (XDP_TX), 2 = pass to the stack (l4sink's echo socket), 0 = drop
	__u32 key_dport;   // distinct flows keyed by destination port (1, client side) or source port (0)
	__u32 _pad;
};

enum {
	C_RX = 0,      // IPv4/UDP frames received (dropped or answered)
	C_SNAT = 1,    // ... whose source address is snat_addr
	C_TX = 2,      // ... answered
	C_PASS = 3,    // other frames, passed to the stack
	C_FLOWS = 4,   // distinct flow ports seen
	C_BYTES = 5,   // bytes of C_RX frames
	C_N = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_cfg);
} sink_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_N);
	__type(key, __u32);
	__type(value, __u64);
} sink_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} sink_seen SEC(".maps");

static __always_inline void bump(__u32 idx, __u64 by)
{
	__u64 *c = bpf_map_lookup_elem(&sink_counters, &idx);
	if (c)
		*c += by;
}

SEC("xdp")
int l4sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 k0 = 0;

	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP) {
		bump(C_PASS, 1);
		return XDP_PASS;
	}
	struct sink_cfg *cfg = bpf_map_lookup_elem(&sink_cfg, &k0);
	if (!cfg)
		return XDP_PASS;

	bump(C_RX, 1);
	bump(C_BYTES, data_end - data);
	if (cfg->snat_addr && ip->saddr == cfg->snat_addr)
		bump(C_SNAT, 1);
	__u32 port = bpf_ntohs(cfg->key_dport ? udp->dest : udp->source);
	__u32 *seen = bpf_map_lookup_elem(&sink_seen, &port);
	if (seen && *seen == 0) {
		*seen = 1;
		bump(C_FLOWS, 1);
	}

	if (cfg->reply == 2) {
		bump(C_TX, 1);
		return XDP_PASS;
	}
	if (cfg->reply == 1) {
		__u8 mac[ETH_ALEN];
		__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
		__u32 a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
		__u16 p = udp->source;
		udp->source = udp->dest;
		udp->dest = p;
		// Swapping addresses and ports changes neither the IPv4 nor the UDP checksum.
		bump(C_TX, 1);
		return XDP_TX;
	}
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
