// Command control-plane runs a real, kubelet-less Kubernetes control plane in
// one process on loopback, for the system tests: an embedded etcd, the real
// kube-apiserver and the real kube-controller-manager, started through their
// own cobra commands with ordinary flag lists.
//
// Pods are never run (there is no kubelet and no scheduler): a test moves a
// pod through its life by writing the pod's status subresource itself.
// With --node-address the control plane serves a real node instead
// (tests/node, started by scripts/node.sh): the apiserver listens on and
// advertises that address (the bridge gateway the pods reach it through, as
// the `kubernetes` Service), authorizes kubelets with the Node authorizer,
// and the PKI gets the node's certificates and kubeconfigs.
//
// Everything lives under --dir: etcd data, the generated PKI (a CA, the
// apiserver's serving certificate, client certificates, the service-account
// signing key) and two kubeconfigs, kubeconfig (admin, group system:masters)
// and controller-manager.kubeconfig.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	logsapi "k8s.io/component-base/logs/api/v1"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

// defaultControllers are the controllers the tests rely on: workloads (Deployment,
// ReplicaSet, Job, StatefulSet, CronJob, PodDisruptionBudget status), ownership
// and namespace clean-up, service accounts with their tokens and the
// kube-root-ca.crt ConfigMap, and the aggregated admin/edit/view ClusterRoles.
const defaultControllers = "deployment-controller,replicaset-controller,job-controller," +
	"statefulset-controller,cronjob-controller,disruption-controller," +
	"garbage-collector-controller,namespace-controller," +
	"serviceaccount-controller,serviceaccount-token-controller," +
	"root-ca-certificate-publisher-controller,clusterrole-aggregation-controller"

// nodeControllers are added to the defaults when a real node runs: Service
// endpoints for kube-proxy, the clean-up of pods whose node is gone, and the
// node lifecycle (it lifts the not-ready taint the kubelet registers with).
const nodeControllers = ",endpointslice-controller,endpoints-controller,pod-garbage-collector-controller,node-lifecycle-controller"

type options struct {
	dir            string
	etcdPort       int
	etcdPeerPort   int
	apiserverPort  int
	controllerPort int
	controllers    string
	verbosity      int
	nodeAddress    string
	nodeName       string
}

// host is the address the apiserver listens on and clients dial.
func (o options) host() string {
	if o.nodeAddress != "" {
		return o.nodeAddress
	}
	return "127.0.0.1"
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "directory for etcd data, PKI and kubeconfigs (required)")
	flag.IntVar(&o.etcdPort, "etcd-port", 2379, "etcd client port on 127.0.0.1")
	flag.IntVar(&o.etcdPeerPort, "etcd-peer-port", 2380, "etcd peer port on 127.0.0.1")
	flag.IntVar(&o.apiserverPort, "apiserver-port", 6443, "kube-apiserver secure port on 127.0.0.1")
	flag.IntVar(&o.controllerPort, "controller-manager-port", 10257, "kube-controller-manager secure port on 127.0.0.1")
	flag.StringVar(&o.controllers, "controllers", defaultControllers, "kube-controller-manager --controllers")
	flag.IntVar(&o.verbosity, "v", 0, "klog verbosity of both components")
	flag.StringVar(&o.nodeAddress, "node-address", "", "serve a real node: the IPv4 address (the pod bridge's gateway) the apiserver listens on and advertises")
	flag.StringVar(&o.nodeName, "node-name", "pgw-node", "the node's name (its kubelet's client certificate is system:node:NAME)")
	flag.Parse()
	if o.dir == "" {
		fmt.Fprintln(os.Stderr, "control-plane: --dir is required")
		os.Exit(2)
	}
	if o.nodeAddress != "" && net.ParseIP(o.nodeAddress).To4() == nil {
		fmt.Fprintf(os.Stderr, "control-plane: --node-address %q is not an IPv4 address\n", o.nodeAddress)
		os.Exit(2)
	}
	if o.nodeAddress != "" && o.controllers == defaultControllers {
		o.controllers += nodeControllers
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "control-plane: %v\n", err)
		os.Exit(1)
	}
}

func run(o options) error {
	// Both commands apply the (identical) logging configuration; the second
	// application must be accepted rather than rejected.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	// A ready file left by an earlier run must not satisfy the start script.
	if err := os.Remove(filepath.Join(dir, "ready")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var node *nodeIdentity
	if o.nodeAddress != "" {
		node = &nodeIdentity{name: o.nodeName, address: net.ParseIP(o.nodeAddress)}
	}
	pki, err := ensurePKI(filepath.Join(dir, "pki"), node)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	server := "https://" + net.JoinHostPort(o.host(), strconv.Itoa(o.apiserverPort))
	adminKubeconfig := filepath.Join(dir, "kubeconfig")
	cmKubeconfig := filepath.Join(dir, "controller-manager.kubeconfig")
	if err := writeKubeconfig(adminKubeconfig, server, pki.ca, pki.admin); err != nil {
		return err
	}
	if err := writeKubeconfig(cmKubeconfig, server, pki.ca, pki.controllerManager); err != nil {
		return err
	}
	if node != nil {
		// The node's components, one identity each (scripts/node.sh uses them).
		for name, client := range map[string]certFiles{
			"kubelet.kubeconfig":    pki.node.kubelet,
			"kube-proxy.kubeconfig": pki.node.proxy,
			"scheduler.kubeconfig":  pki.node.scheduler,
		} {
			if err := writeKubeconfig(filepath.Join(dir, name), server, pki.ca, client); err != nil {
				return err
			}
		}
	}

	etcd, err := startEtcd(filepath.Join(dir, "etcd"), o.etcdPort, o.etcdPeerPort)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	// stopped receives the outcome of the first component to stop. The
	// apiserver's command installs the process's SIGTERM/SIGINT handler and
	// returns nil once it has shut down gracefully after one: exit 0 then.
	stopped := make(chan error, 3)
	go func() {
		err := <-etcd.Err()
		stopped <- fmt.Errorf("etcd stopped: %v", err)
	}()
	api := apiserver.NewAPIServerCommand()
	api.SetArgs(apiserverArgs(o, pki))
	go func() {
		err := api.Execute()
		if err != nil {
			err = fmt.Errorf("kube-apiserver stopped: %w", err)
		}
		stopped <- err
	}()

	admin, err := adminClient(adminKubeconfig)
	if err != nil {
		return err
	}
	// The controller-manager gives up if the apiserver is not healthy within
	// 10 seconds of its start, so it starts only once /readyz answers ok.
	if err := poll("apiserver ready", stopped, apiserverReady(admin)); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "control-plane: apiserver ready on %s, starting the controller-manager\n", server)
	cm := controllermanager.NewControllerManagerCommand()
	cm.SetArgs(controllerManagerArgs(o, pki, cmKubeconfig))
	go func() {
		err := cm.Execute()
		stopped <- fmt.Errorf("kube-controller-manager stopped: %v", err)
	}()
	if err := poll("controllers running", stopped, controllersRunning(admin)); err != nil {
		return err
	}
	// scripts/control-plane.sh waits for this file.
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(server+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "control-plane: ready")

	return <-stopped
}

func adminClient(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// startEtcd runs a single-member etcd without fsync (throw-away test data).
func startEtcd(dataDir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dataDir
	client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "warn"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("not ready after 60s")
	}
}

func apiserverArgs(o options, p *pkiFiles) []string {
	args := []string{
		"--etcd-servers=http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(o.etcdPort)),
		"--bind-address=" + o.host(),
		"--secure-port=" + strconv.Itoa(o.apiserverPort),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--cert-dir=" + filepath.Dir(p.ca.cert),
		"--tls-cert-file=" + p.serving.cert,
		"--tls-private-key-file=" + p.serving.key,
		"--client-ca-file=" + p.ca.cert,
		// Request-header (front-proxy) authentication, as kubeadm sets it up:
		// the controller-manager's delegated authentication reads this CA from
		// the extension-apiserver-authentication ConfigMap and fails without it.
		// Only the front-proxy-client certificate may assert these headers.
		"--requestheader-client-ca-file=" + p.ca.cert,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.frontProxy.cert,
		"--proxy-client-key-file=" + p.frontProxy.key,
		// RBAC only: system:masters (the admin kubeconfig and the apiserver's own
		// loopback client) is always allowed, everyone else needs a binding.
		"--anonymous-auth=false",
		// Bound service-account tokens (TokenRequest API).
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.serviceAccountPub,
		"--service-account-signing-key-file=" + p.serviceAccountKey,
		"--profiling=false",
		"--v=" + strconv.Itoa(o.verbosity),
	}
	if p.node == nil {
		return append(args,
			// No node ever reaches this address: it only fills in the default
			// `kubernetes` Service, whose endpoints are not reconciled (loopback
			// addresses are invalid in Endpoints).
			"--advertise-address=127.0.0.1",
			"--endpoint-reconciler-type=none",
			"--authorization-mode=RBAC",
		)
	}
	return append(args,
		// The `kubernetes` Service's endpoint: pods reach the apiserver
		// through it (kube-proxy), at the bridge gateway.
		"--advertise-address="+o.nodeAddress,
		"--endpoint-reconciler-type=lease",
		// Kubelets act as system:node:NAME and may touch only their own
		// node and the pods bound to it, as in production clusters.
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		// logs, exec and port-forward: the apiserver calls the kubelet with
		// its own client certificate and checks the kubelet's serving one.
		"--kubelet-client-certificate="+p.node.apiserverClient.cert,
		"--kubelet-client-key="+p.node.apiserverClient.key,
		"--kubelet-certificate-authority="+p.ca.cert,
		"--kubelet-preferred-address-types=InternalIP",
	)
}

func controllerManagerArgs(o options, p *pkiFiles, kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(o.controllerPort),
		"--cert-dir=" + filepath.Join(filepath.Dir(p.ca.cert), "controller-manager"),
		"--controllers=" + o.controllers,
		// Each controller acts with its own service account's token, as in a
		// real cluster, so their RBAC roles are exercised too.
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.serviceAccountKey,
		"--root-ca-file=" + p.ca.cert,
		"--leader-elect=false",
		"--profiling=false",
		"--v=" + strconv.Itoa(o.verbosity),
	}
}

// poll calls check every half second until it succeeds, a component stops
// (done yields its error) or five minutes pass.
func poll(what string, done <-chan error, check func(context.Context) error) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after 5 minutes: %v", what, err)
		}
		select {
		case err := <-done:
			return fmt.Errorf("%s: stopped first: %v", what, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// apiserverReady asks /readyz, which answers ok once etcd, RBAC bootstrap
// and the other post-start hooks are done.
func apiserverReady(client kubernetes.Interface) func(context.Context) error {
	return func(ctx context.Context) error {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) != "ok" {
			err = fmt.Errorf("/readyz: %q", body)
		}
		return err
	}
}

// controllersRunning checks that the serviceaccount controller has created
// the default ServiceAccount: from then on pods can be admitted in `default`.
func controllersRunning(client kubernetes.Interface) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}
}
