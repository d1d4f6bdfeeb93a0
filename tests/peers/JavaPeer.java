// Real Java TLS servers for the tests, run from source: java JavaPeer.java MODE PORT CERT KEY BODYFILE
//
//   jsse         an SSLServerSocket answering HTTP/1.1 by hand (JSSE's own answer to plaintext: a TLS alert)
//   httpsserver  the JDK's com.sun.net.httpserver.HttpsServer
//
// Both bind 127.0.0.1, load the lab's PEM certificate and PKCS#8 EC key, and answer GET / with the bytes of
// BODYFILE. A line "listening" on stdout says the port is open.

import com.sun.net.httpserver.HttpsConfigurator;
import com.sun.net.httpserver.HttpsServer;
import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.Base64;
import java.util.concurrent.Executors;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;

public class JavaPeer {
    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: java JavaPeer.java jsse|httpsserver PORT CERT KEY BODYFILE");
            System.exit(2);
        }
        int port = Integer.parseInt(args[1]);
        SSLContext tls = context(Path.of(args[2]), Path.of(args[3]));
        byte[] body = Files.readAllBytes(Path.of(args[4]));
        InetAddress loopback = InetAddress.getByName("127.0.0.1");
        switch (args[0]) {
            case "jsse" -> jsse(tls, new InetSocketAddress(loopback, port), body);
            case "httpsserver" -> httpsServer(tls, new InetSocketAddress(loopback, port), body);
            default -> throw new IllegalArgumentException("unknown mode " + args[0]);
        }
    }

    static SSLContext context(Path certFile, Path keyFile) throws Exception {
        Certificate cert;
        try (InputStream in = Files.newInputStream(certFile)) {
            cert = CertificateFactory.getInstance("X.509").generateCertificate(in);
        }
        String pem = Files.readString(keyFile).replaceAll("-----[A-Z ]+-----", "").replaceAll("\\s", "");
        PrivateKey key = KeyFactory.getInstance("EC").generatePrivate(new PKCS8EncodedKeySpec(Base64.getDecoder().decode(pem)));
        KeyStore store = KeyStore.getInstance("PKCS12");
        store.load(null, null);
        char[] password = "esrs".toCharArray();
        store.setKeyEntry("peer", key, password, new Certificate[] {cert});
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(store, password);
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(kmf.getKeyManagers(), null, null);
        return tls;
    }

    static void jsse(SSLContext tls, InetSocketAddress address, byte[] body) throws Exception {
        SSLServerSocket server = (SSLServerSocket) tls.getServerSocketFactory().createServerSocket();
        server.bind(address, 50);
        System.out.println("listening");
        while (true) {
            Socket conn = server.accept();
            Thread t = new Thread(() -> serve(conn, body));
            t.setDaemon(true);
            t.start();
        }
    }

    /** One request per connection: read the head, answer 200 with the body, close (a plaintext peer gets JSSE's alert). */
    static void serve(Socket conn, byte[] body) {
        try (conn) {
            conn.setSoTimeout(10000);
            InputStream in = conn.getInputStream();
            ByteArrayOutputStream head = new ByteArrayOutputStream();
            int c;
            while ((c = in.read()) != -1) {
                head.write(c);
                byte[] h = head.toByteArray();
                int n = h.length;
                if (n >= 4 && h[n - 4] == '\r' && h[n - 3] == '\n' && h[n - 2] == '\r' && h[n - 1] == '\n') {
                    break;
                }
            }
            OutputStream out = conn.getOutputStream();
            String status = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + body.length
                    + "\r\nConnection: close\r\n\r\n";
            out.write(status.getBytes(StandardCharsets.US_ASCII));
            out.write(body);
            out.flush();
        } catch (Exception e) {
            System.out.println("connection: " + e);
        }
    }

    static void httpsServer(SSLContext tls, InetSocketAddress address, byte[] body) throws Exception {
        HttpsServer server = HttpsServer.create(address, 50);
        server.setHttpsConfigurator(new HttpsConfigurator(tls));
        server.createContext("/", exchange -> {
            exchange.getResponseHeaders().set("Content-Type", "text/plain");
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        System.out.println("listening");
    }
}
