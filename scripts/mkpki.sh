#!/bin/bash
# Makes a throwaway PKI for a mirror on loopback: a CA, a server
# certificate for 127.0.0.1/localhost signed by it, a client certificate,
# and a bearer token.  Usage: scripts/mkpki.sh DIR
set -euo pipefail
dir=${1:?usage: $0 DIR}
mkdir -p "$dir"
cd "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
	-subj "/CN=aimfs demo CA" -keyout ca.key -out ca.pem 2>/dev/null
for who in server client; do
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-subj "/CN=aimfs $who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
	if [ "$who" = server ]; then
		ext="subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
	else
		ext="extendedKeyUsage=clientAuth"
	fi
	openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
		-extfile <(printf '%s\n' "$ext") -out "$who.pem" 2>/dev/null
	rm -f "$who.csr"
done
head -c 32 /dev/urandom | base64 | tr -d '=+/\n' > token
chmod 644 ca.pem server.pem client.pem
echo "PKI in $dir: ca.pem, server.{pem,key}, client.{pem,key}, token"
