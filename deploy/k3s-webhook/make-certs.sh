#!/usr/bin/env bash
# Makes the TLS material of the audit webhook (deploy/README.md, "The audit webhook"):
#   ca.crt, ca.key          a private CA for this link only (P-256); keep ca.key off the node
#                           once the two certificates below are made (it is needed only to
#                           renew them)
#   server.crt, server.key  the shipper's server certificate: subjectAltName IP 127.0.0.1,
#                           extendedKeyUsage serverAuth
#   client.crt, client.key  the API server's client certificate (CN kube-apiserver-audit),
#                           extendedKeyUsage clientAuth
# The API server trusts ca.crt for the server (the kubeconfig's certificate-authority); the
# shipper requires a client certificate from the same CA (webhook.client_ca_file).
# Usage: make-certs.sh OUT_DIR [DAYS]   (DAYS of validity, default 825). OpenSSL 1.1.1 or 3.x.
set -euo pipefail
out=${1:?usage: make-certs.sh OUT_DIR [DAYS]}
days=${2:-825}
umask 077
mkdir -p "$out"
cd "$out"
for f in ca.key server.key client.key; do
    [ ! -e "$f" ] || { echo "make-certs: $out/$f exists; not overwriting" >&2; exit 1; }
done

cat > openssl.cnf <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 -new -config openssl.cnf -extensions ca "${newkey[@]}" \
    -keyout ca.key -out ca.crt -days "$days" -subj "/CN=kube-audit-shipper webhook CA" 2>/dev/null
for who in server client; do
    case $who in
        server) cn="kube-audit-shipper webhook" ;;
        client) cn="kube-apiserver-audit" ;;
    esac
    openssl req -new -config openssl.cnf "${newkey[@]}" -keyout "$who.key" -out "$who.csr" \
        -subj "/CN=$cn" 2>/dev/null
    openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
        -days "$days" -extfile openssl.cnf -extensions "$who" -out "$who.crt" 2>/dev/null
    rm -f "$who.csr"
done
rm -f openssl.cnf
openssl verify -CAfile ca.crt -purpose sslserver server.crt >/dev/null
openssl verify -CAfile ca.crt -purpose sslclient client.crt >/dev/null
echo "make-certs: $out/{ca,server,client}.{crt,key}, valid $days days"
