// An XDP program that passes every frame: attached natively to the firewall's veths in the
// `haproxy-xdp` variant of bench/netns/tls.sh, it prices what native XDP on veth costs an skb-path
// peer (frame conversion, no page reuse), apart from portcullis' own work.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
