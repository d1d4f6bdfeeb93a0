// A real Go net/http TLS server for the tests: GET / answers the bytes of a file.
//
//	go-peer ADDR CERT KEY BODYFILE
//
// Go answers a plaintext request on this port with its own 400 page, which is the point of this peer.
package main

import (
	"log"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 5 {
		log.Fatal("usage: go-peer ADDR CERT KEY BODYFILE")
	}
	addr, cert, key, bodyFile := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	body, err := os.ReadFile(bodyFile)
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	})
	log.Fatal(http.ListenAndServeTLS(addr, cert, key, nil))
}
