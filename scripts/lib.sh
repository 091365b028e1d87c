# Shared by the scripts: tool installation and per-run names.
# Source it; it defines functions only.

# ensure_tools installs iperf3, iproute2, iputils-ping and tcpdump (the
# --pcap test reads its capture back with tcpdump -r) with apt-get when a
# command is missing (apt-get update first: a fresh machine has no lists).
ensure_tools() {
	local need=()
	command -v ip >/dev/null 2>&1 || need+=(iproute2)
	command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
	command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
	command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
	[ ${#need[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing ${need[*]}: install them (sudo apt-get install ${need[*]}) or run as root" >&2
		return 1
	fi
	echo "installing ${need[*]} with apt-get" >&2
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# run_suffix prints 6 random hex digits, for names that never collide with a
# leftover of a killed run.
run_suffix() { od -An -N3 -tx1 /dev/urandom | tr -d ' \n'; }
