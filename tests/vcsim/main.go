// vcsim for vipvisor's tests: govmomi's vSphere simulator (Debian's
// golang-github-vmware-govmomi-dev 0.24.2) with a VPX model, served until SIGTERM, plus the
// calls stock vcsim lacks (ext.go). Our own small main: Debian ships the simulator library
// but not vcsim's main package.
//
//	vcsim -l 127.0.0.1:0 [-tls [-tlscert F -tlskey F]] [-username U -password-file F] [-host N] [-vm N] [-cluster-host N]
//
// When ready it prints one line, `url=<sdk URL without credentials>`, and with -tls a second,
// `cert=<PEM file>` (the server's self-signed certificate, its own CA), then serves.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"crypto/tls"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	addr := flag.String("l", "127.0.0.1:0", "listen address")
	useTLS := flag.Bool("tls", false, "serve HTTPS (with -tlscert/-tlskey, else httptest's 1024-bit RSA certificate, which rustls and OpenSSL refuse)")
	tlsCert := flag.String("tlscert", "", "PEM certificate for -tls")
	tlsKey := flag.String("tlskey", "", "PEM private key for -tls")
	user := flag.String("username", "", "require this user name (and -password-file)")
	passwordFile := flag.String("password-file", "", "file holding the required password")
	hosts := flag.Int("host", 1, "standalone hosts per datacenter")
	clusterHosts := flag.Int("cluster-host", 3, "hosts per cluster")
	vms := flag.Int("vm", 2, "VMs per resource pool")
	flag.Parse()

	model := simulator.VPX()
	model.Host = *hosts
	model.ClusterHost = *clusterHosts
	model.Machine = *vms
	if err := model.Create(); err != nil {
		log.Fatalf("creating the model: %v", err)
	}
	extend()

	model.Service.Listen = &url.URL{Host: *addr}
	if *user != "" {
		pw, err := os.ReadFile(*passwordFile)
		if err != nil {
			log.Fatalf("-password-file: %v", err)
		}
		model.Service.Listen.User = url.UserPassword(*user, strings.TrimRight(string(pw), "\r\n"))
	}
	if *useTLS {
		model.Service.TLS = new(tls.Config)
		if *tlsCert != "" {
			pair, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
			if err != nil {
				log.Fatalf("-tlscert/-tlskey: %v", err)
			}
			model.Service.TLS.Certificates = []tls.Certificate{pair}
		}
	}
	s := model.Service.NewServer()
	u := *s.URL
	u.User = nil
	fmt.Printf("url=%s\n", u.String())
	if *useTLS {
		f, err := s.CertificateFile()
		if err != nil {
			log.Fatalf("writing the certificate: %v", err)
		}
		fmt.Printf("cert=%s\n", f)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	s.Close()
	model.Remove()
}
