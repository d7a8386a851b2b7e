package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// certFiles names a PEM certificate and its PEM private key.
type certFiles struct{ cert, key string }

// pkiFiles is what ensurePKI leaves in its directory.
type pkiFiles struct {
	ca                certFiles  // self-signed; signs everything below and verifies client certs
	serving           certFiles  // kube-apiserver's serving certificate for 127.0.0.1/localhost
	admin             certFiles  // client: CN=admin, O=system:masters
	controllerManager certFiles  // client: CN=system:kube-controller-manager
	frontProxy        certFiles  // client: CN=front-proxy-client, the aggregator's request-header identity
	serviceAccountKey string     // RSA private key that signs service-account tokens
	serviceAccountPub string     // its public key, which verifies them
	node              *nodeFiles // with --node-address only
}

// nodeIdentity is the real node the control plane serves (--node-address).
type nodeIdentity struct {
	name    string
	address net.IP
}

// nodeFiles are the certificates of the node's components.
type nodeFiles struct {
	kubelet         certFiles // client: CN=system:node:NAME, O=system:nodes (the Node authorizer)
	kubeletServing  certFiles // the kubelet's serving certificate for the node address
	proxy           certFiles // client: CN=system:kube-proxy (bound to system:node-proxier)
	scheduler       certFiles // client: CN=system:kube-scheduler
	apiserverClient certFiles // the apiserver's client certificate towards the kubelet (logs, exec)
}

// ensurePKI creates the PKI in dir unless a previous start already did, so a
// restart on the same directory keeps issued tokens and kubeconfigs valid.
func ensurePKI(dir string, node *nodeIdentity) (*pkiFiles, error) {
	p := &pkiFiles{
		ca:                certFiles{filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")},
		serving:           certFiles{filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key")},
		admin:             certFiles{filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")},
		controllerManager: certFiles{filepath.Join(dir, "controller-manager.crt"), filepath.Join(dir, "controller-manager.key")},
		frontProxy:        certFiles{filepath.Join(dir, "front-proxy-client.crt"), filepath.Join(dir, "front-proxy-client.key")},
		serviceAccountKey: filepath.Join(dir, "sa.key"),
		serviceAccountPub: filepath.Join(dir, "sa.pub"),
	}
	if node != nil {
		pair := func(name string) certFiles {
			return certFiles{filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")}
		}
		p.node = &nodeFiles{
			kubelet:         pair("kubelet-client"),
			kubeletServing:  pair("kubelet-serving"),
			proxy:           pair("kube-proxy"),
			scheduler:       pair("scheduler"),
			apiserverClient: pair("apiserver-kubelet-client"),
		}
	}
	if _, err := os.Stat(p.serviceAccountPub); err == nil {
		if node != nil {
			if _, err := os.Stat(p.node.kubelet.cert); err != nil {
				return nil, fmt.Errorf("%s was made without --node-address; start on a fresh directory", dir)
			}
		}
		return p, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTemplate := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "control-plane-ca"},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caCert, err := issue(caTemplate, nil, caKey, p.ca)
	if err != nil {
		return nil, err
	}
	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
	}
	clients := map[certFiles]pkix.Name{
		p.admin:             {CommonName: "admin", Organization: []string{"system:masters"}},
		p.controllerManager: {CommonName: "system:kube-controller-manager"},
		p.frontProxy:        {CommonName: "front-proxy-client"},
	}
	if node != nil {
		// The apiserver listens on the node address too (pods reach it there
		// through the `kubernetes` Service).
		serving.IPAddresses = append(serving.IPAddresses, node.address)
		clients[p.node.kubelet] = pkix.Name{CommonName: "system:node:" + node.name, Organization: []string{"system:nodes"}}
		clients[p.node.proxy] = pkix.Name{CommonName: "system:kube-proxy"}
		clients[p.node.scheduler] = pkix.Name{CommonName: "system:kube-scheduler"}
		// Full access to the kubelet API; production clusters bind a narrower
		// group to system:kubelet-api-admin, which needs a binding created after start.
		clients[p.node.apiserverClient] = pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}
		kubeletServing := &x509.Certificate{
			Subject:     pkix.Name{CommonName: node.name},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{node.name},
			IPAddresses: []net.IP{node.address},
		}
		if _, err := issue(kubeletServing, &signer{caCert, caKey}, nil, p.node.kubeletServing); err != nil {
			return nil, err
		}
	}
	if _, err := issue(serving, &signer{caCert, caKey}, nil, p.serving); err != nil {
		return nil, err
	}
	for files, subject := range clients {
		client := &x509.Certificate{Subject: subject, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if _, err := issue(client, &signer{caCert, caKey}, nil, files); err != nil {
			return nil, err
		}
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.serviceAccountKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return nil, err
	}
	// Written last: its presence marks a complete PKI.
	return p, writePEM(p.serviceAccountPub, "PUBLIC KEY", pub)
}

type signer struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// issue signs template with parent (self-signed with key when parent is nil;
// a fresh P-256 key otherwise) and writes the certificate and key to files.
func issue(template *x509.Certificate, parent *signer, key *ecdsa.PrivateKey, files certFiles) (*x509.Certificate, error) {
	var err error
	if key == nil {
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	template.SerialNumber = serial
	template.NotBefore = time.Now().Add(-time.Hour)
	template.NotAfter = time.Now().Add(10 * 365 * 24 * time.Hour)
	template.KeyUsage |= x509.KeyUsageDigitalSignature
	issuer, issuerKey := template, crypto.Signer(key)
	if parent != nil {
		issuer, issuerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, issuer, key.Public(), issuerKey)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", files.cert, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writePEM(files.key, "EC PRIVATE KEY", keyDER); err != nil {
		return nil, err
	}
	if err := writePEM(files.cert, "CERTIFICATE", der); err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func writePEM(path, blockType string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600)
}

// writeKubeconfig writes a kubeconfig with the CA and client credential
// embedded, so it stays usable when copied elsewhere.
func writeKubeconfig(path, server string, ca, client certFiles) error {

	caPEM, err := os.ReadFile(ca.cert)
	if err != nil {
		return err
	}
	certPEM, err := os.ReadFile(client.cert)
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(client.key)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["control-plane"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts["control-plane"] = &clientcmdapi.Context{Cluster: "control-plane", AuthInfo: "user", Namespace: "default"}
	cfg.CurrentContext = "control-plane"
	return clientcmd.WriteToFile(*cfg, path)
}
