# The tables of scripts/bench.sh, from its results file: one line
# "NAME METRIC VALUE ROUND" per figure. Medians per contender and metric;
# ratios of medians for like against like; the median of per-round ratios
# (the two ran minutes apart, so drift between rounds cancels); with 6
# rounds or more, a distribution-free 95 % interval for that median and the
# rounds in which the ratio was 1 or more. Plain awk (mawk or gawk).
#
#   awk -f scripts/benchtable.awk RESULTS
{ ran[$1] = 1; k = $1 SUBSEP $2; n[k]++; v[k, n[k]] = $3; byround[$1, $2, $4] = $3; if ($4 > rounds) rounds = $4 }
function median(k,   i, j, t, c, a) {
	c = n[k]; if (c == 0) return 0; for (i = 1; i <= c; i++) a[i] = v[k, i]
	for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
	return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
}
function ratio(x, y) { return (y + 0 == 0) ? "n/a" : sprintf("%.2f", x / y) }
END {
	nd = split("veth tapfwd tapfwd-offload tapfwd-pipe tapminiport-plain tapminiport-nocoal tapminiport tapminiport-base tapminiport-q2 tapminiport-nomod tapminiport-nopoll tapminiport-read", order, " ")
	nm = split("tcp_up tcp_down tcp_p4_up tcp_p4_down udp64_kpps ping_ms cpu_gb", m, " ")
	split("TCP up|TCP dn|TCP P4 up|TCP P4 dn|UDP kpps|ping ms|CPU s/GB", head, "|")
	split("TCP up|TCP dn|TCP P4 up|TCP P4 dn|UDP|ping|CPU", rhead, "|")
	split("%.2f %.2f %.2f %.2f %.1f %.3f %.3f", fmt, " ")
	for (i = 1; i <= nm; i++) w[i] = length(head[i])
	rule = "|---|"; for (i = 1; i <= nm; i++) rule = rule "---|"
	printf "| %-18s |", "datapath"; for (i = 1; i <= nm; i++) printf " %*s |", w[i], head[i]; printf "\n%s\n", rule
	for (o = 1; o <= nd; o++) { d = order[o]
		if (!(d in ran)) continue
		printf "| %-18s |", d
		for (i = 1; i <= nm; i++) printf " %*s |", w[i], n[d SUBSEP m[i]] ? sprintf(fmt[i], median(d SUBSEP m[i])) : "-"
		printf "\n" }
	print ""
	# like for like: plain frames against the plain forwarder, offloads against the offload forwarder
	np = split("tapfwd-pipe/tapfwd-offload tapminiport-plain/tapfwd tapminiport-nocoal/tapfwd-offload tapminiport/tapfwd-offload tapminiport-q2/tapfwd-offload tapminiport-nomod/tapfwd-offload tapminiport-nopoll/tapfwd-offload tapminiport-read/tapfwd-offload tapminiport/veth tapminiport/tapminiport-base tapminiport-base/tapfwd-offload", pairs, " ")
	printf "| %-36s |", "ratio (ping, CPU: lower is better)"; for (i = 1; i <= nm; i++) printf " %*s |", w[i], rhead[i]; printf "\n%s\n", rule
	for (o = 1; o <= np; o++) { split(pairs[o], ab, "/"); a = ab[1]; d = ab[2]
		if (!(a in ran) || !(d in ran)) continue
		printf "| %-36s |", a " / " d
		for (i = 1; i <= nm; i++) printf " %*s |", w[i], (n[a SUBSEP m[i]] && n[d SUBSEP m[i]]) ? ratio(median(a SUBSEP m[i]), median(d SUBSEP m[i])) : "n/a"
		printf "\n" }
	# paired: the ratio within each round (the two ran minutes apart),
	# then the median over rounds; drift between rounds cancels
	print ""
	printf "| %-36s |", "median of per-round ratios"; for (i = 1; i <= nm; i++) printf " %*s |", w[i], rhead[i]; printf "\n%s\n", rule
	for (o = 1; o <= np; o++) { split(pairs[o], ab, "/"); a = ab[1]; d = ab[2]
		if (!(a in ran) || !(d in ran)) continue
		printf "| %-36s |", a " / " d
		for (i = 1; i <= nm; i++) {
			k = "pair" SUBSEP a SUBSEP d SUBSEP m[i]; n[k] = 0
			for (rr = 1; rr <= rounds; rr++) if ((a, m[i], rr) in byround && (d, m[i], rr) in byround && byround[d, m[i], rr] + 0 != 0) { n[k]++; v[k, n[k]] = byround[a, m[i], rr] / byround[d, m[i], rr] }
			printf " %*s |", w[i], n[k] ? sprintf("%.2f", median(k)) : "n/a"
		}
		printf "\n" }
	# with 6 rounds or more: a distribution-free 95 % interval for the
	# median of the per-round ratios (order statistics, binomial), and
	# in how many rounds the ratio was 1 or more
	if (rounds < 6) exit
	print ""
	printf "| %-36s |", "its 95 % interval (rounds ≥ 1)"; for (i = 1; i <= nm; i++) printf " %*s |", w[i], rhead[i]; printf "\n%s\n", rule
	for (o = 1; o <= np; o++) { split(pairs[o], ab, "/"); a = ab[1]; d = ab[2]
		if (!(a in ran) || !(d in ran)) continue
		printf "| %-36s |", a " / " d
		for (i = 1; i <= nm; i++) printf " %*s |", w[i], interval("pair" SUBSEP a SUBSEP d SUBSEP m[i])
		printf "\n" }
}
# interval(k): "lo–hi (w/c)" for the c values v[k, 1..c]: the j-th
# smallest and the j-th largest, j the largest rank with P(Bin(c, 1/2)
# < j) <= 0.025; w is how many are 1 or more
function interval(k,   c, i, jj, t, s, p, cdf, j, wins) {
	c = n[k]; if (c < 6) return "n/a"
	for (i = 1; i <= c; i++) { s[i] = v[k, i]; if (s[i] >= 1) wins++ }
	for (i = 2; i <= c; i++) { t = s[i]; for (jj = i - 1; jj >= 1 && s[jj] > t; jj--) s[jj + 1] = s[jj]; s[jj + 1] = t }
	p = 0.5 ^ c; cdf = p; j = 0
	for (i = 0; cdf <= 0.025; i++) { j = i + 1; p = p * (c - i) / (i + 1); cdf += p }
	if (j < 1) return "n/a"
	return sprintf("%.2f–%.2f (%d/%d)", s[j], s[c - j + 1], wins + 0, c)
}
