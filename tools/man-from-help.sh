#!/bin/sh
# Turn `pyrycode-relay --help` (stdin) into the man page pyrycode-relay(8) (stdout), so
# the man page and --help have one source, src/config/usage.c, and cannot drift.
# Run at build time by the Makefile:  pyrycode-relay --help | tools/man-from-help.sh VERSION
#
# It knows the layout usage.c prints: "Usage:" lines, description paragraphs, the
# "Flags:" paragraph, one "  --flag ARG" line per flag with its help indented under it,
# then paragraphs that start "Environment", "Signals:", "Exit status:" and "See ".
# Plain POSIX awk (Debian's mawk): nothing to install for a build.
set -eu
version=${1:-dev}
exec awk -v version="$version" '
# roff escapes: a backslash prints as \e; every hyphen of an option name (a word that
# starts with "-" after a space, "(", "[", "/", "|", "=" or a quote) is a real minus \-,
# so --flag can be searched for and copied; a line may not start with a control
# character.
function esc(s,    out, i, c, prev, in_opt) {
	out = ""; prev = " "; in_opt = 0
	for (i = 1; i <= length(s); i++) {
		c = substr(s, i, 1)
		if (c == "-" && prev ~ /[ (\[\/|"=]/) in_opt = 1
		else if (c !~ /[A-Za-z0-9-]/) in_opt = 0
		prev = c
		if (c == "\\") c = "\\e"
		else if (c == "-" && in_opt) c = "\\-"
		out = out c
	}
	if (out ~ /^[.\047]/) out = "\\&" out
	return out
}
function section(name) { flush(); printf ".SH %s\n", name; sect = name }
function flush() { if (para != "") { print esc(para); para = "" } }
function add(text) { para = (para == "" ? text : para " " text) }

BEGIN {
	printf ".\\\" Generated from pyrycode-relay --help by tools/man-from-help.sh: edit src/config/usage.c.\n"
	printf ".TH PYRYCODE\\-RELAY 8 \"\" \"pyrycode-relay %s\" \"System Administration\"\n", version
	print ".nh"
	print ".SH NAME"
	print "pyrycode\\-relay \\- WebSocket relay between pyrycode binaries and their phones (io_uring)"
	sect = "SYNOPSIS"; print ".SH SYNOPSIS"; in_intro = 1
}
sect == "SYNOPSIS" && /^(Usage: |       )pyrycode-relay/ {
	sub(/^Usage: /, ""); sub(/^ +/, "")
	n = index($0, " ")
	printf ".B %s\n%s\n.br\n", $1, esc(substr($0, n + 1))
	next
}
/^$/ {
	flush()
	if (sect == "SYNOPSIS") { section("DESCRIPTION") }
	else if (sect == "OPTIONS" || sect == "ENVIRONMENT" || sect == "DESCRIPTION") print ".PP"
	next
}
sect == "DESCRIPTION" && /^Flags:/ { section("OPTIONS") }
/^Environment/ { section("ENVIRONMENT"); sub(/^Environment \(/, ""); sub(/\):$/, "."); add(toupper(substr($0, 1, 1)) substr($0, 2)); flush(); next }
/^Signals: / { section("SIGNALS"); sub(/^Signals: /, "") }
/^Exit status: / { section("EXIT STATUS"); sub(/^Exit status: /, "") }
/^See / {
	section("SEE ALSO")
	sub(/^See /, ""); sub(/\.$/, "")
	print esc($0) " in the source tree;"
	print ".BR systemd.service (5),"
	print ".BR sd_notify (3),"
	print ".BR haproxy (1)."
	sect = "END"; next
}
sect == "OPTIONS" && /^  -/ {
	flush()
	sub(/^  /, "")
	print ".TP"
	n = index($0, " ")
	if ($0 ~ /^-h, /) printf ".B %s\n", esc($0)
	else if (n == 0) printf ".B %s\n", esc($0)
	else printf ".BI \"%s \" %s\n", esc(substr($0, 1, n - 1)), esc(substr($0, n + 1))
	next
}
sect == "OPTIONS" && /^        \(default: / { flush(); sub(/^ +/, ""); print ".br"; print esc($0); next }
sect == "ENVIRONMENT" && /^  [A-Z]/ {
	flush()
	sub(/^  /, "")
	print ".TP"
	printf ".B %s\n", esc($1)
	sub(/^[^ ]+ +/, ""); add($0); next
}
sect == "END" { next }
{ sub(/^ +/, ""); add($0) }
END { flush() }
'
