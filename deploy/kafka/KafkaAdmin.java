// Admin helper for deploy/local/kafka.sh, run with the java source launcher (no build step).
// One JVM waits for the broker and creates every topic: the CLI tools would start a JVM per topic.
//   java -cp 'LIBS/*' KafkaAdmin.java ensure BOOTSTRAP TIMEOUT_S PARTITIONS TOPIC...
//   java -cp 'LIBS/*' KafkaAdmin.java list BOOTSTRAP
//   java -cp 'LIBS/*' KafkaAdmin.java replicated BOOTSTRAP TIMEOUT_S BROKERS
//       (waits until BROKERS brokers answer and every partition has all its replicas in sync)
//   java -cp 'LIBS/*' KafkaAdmin.java controller BOOTSTRAP   (prints the active controller's node id)
// -Dtrialroute.admin.config=FILE adds client properties (security.protocol, SASL, truststore);
// -Dtrialroute.admin.brokers=N makes ensure wait for N brokers (a cluster's topics need all three).
// Topics get the cluster's default.replication.factor (1 on one node, 3 on the local cluster).
import java.io.FileReader;
import java.nio.file.*;
import java.util.*;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.errors.TopicExistsException;

public class KafkaAdmin {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        String config = System.getProperty("trialroute.admin.config", "");
        if (!config.isEmpty() && Files.isReadable(Path.of(config)))
            try (FileReader r = new FileReader(config)) { p.load(r); }
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, a[1]);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        try (Admin admin = Admin.create(p)) {
            switch (a[0]) {
                case "ensure" -> ensure(admin, Integer.parseInt(a[2]), Integer.parseInt(a[3]),
                                        Arrays.asList(a).subList(4, a.length));
                case "replicated" -> replicated(admin, Integer.parseInt(a[2]), Integer.parseInt(a[3]));
                case "controller" -> System.out.println(
                        admin.describeMetadataQuorum().quorumInfo().get().leaderId());
                default -> list(admin);
            }
        }
    }

    static void ensure(Admin admin, int timeoutS, int partitions, List<String> topics) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutS * 1000L;
        awaitBrokers(admin, Integer.getInteger("trialroute.admin.brokers", 1), deadline, timeoutS);
        Set<String> existing = admin.listTopics().names().get();
        List<NewTopic> missing = new ArrayList<>();
        for (String t : topics)
            if (!existing.contains(t)) missing.add(new NewTopic(t, Optional.of(partitions), Optional.empty()));
        for (var e : admin.createTopics(missing).values().entrySet()) {
            try {
                e.getValue().get();
            } catch (ExecutionException ex) {
                if (!(ex.getCause() instanceof TopicExistsException)) throw ex;  // created concurrently
            }
        }
        System.out.println("topics: " + missing.size() + " created, " + (topics.size() - missing.size()) + " already there");
    }

    // The broker answers metadata requests only once it has fully started; a cluster's nodes register
    // one by one, and a topic with three replicas cannot be created before three have.
    static void awaitBrokers(Admin admin, int brokers, long deadline, int timeoutS) throws Exception {
        String why = "";
        while (true) {
            try {
                int n = admin.describeCluster(new DescribeClusterOptions().timeoutMs(2000)).nodes().get().size();
                if (n >= brokers) return;
                why = n + " of " + brokers + " brokers";
            } catch (ExecutionException e) {
                why = String.valueOf(e.getCause());
            }
            if (System.currentTimeMillis() > deadline) {
                System.err.println("brokers not ready within " + timeoutS + " s: " + why);
                System.exit(2);
            }
            Thread.sleep(250);
        }
    }

    // A restarted node is back when it is a broker again and has caught up: every partition (the
    // internal ones too) has all its replicas in sync, so that losing another node loses no quorum.
    static void replicated(Admin admin, int timeoutS, int brokers) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutS * 1000L;
        awaitBrokers(admin, brokers, deadline, timeoutS);
        String why = "";
        while (System.currentTimeMillis() < deadline) {
            try {
                var names = admin.listTopics(new ListTopicsOptions().listInternal(true)).names().get();
                long lagging = 0;
                for (var d : admin.describeTopics(names).allTopicNames().get().values())
                    lagging += d.partitions().stream().filter(p -> p.isr().size() < p.replicas().size()).count();
                if (lagging == 0) return;
                why = lagging + " partitions with replicas out of sync";
            } catch (ExecutionException e) {
                why = String.valueOf(e.getCause());
            }
            Thread.sleep(500);
        }
        System.err.println("not in sync within " + timeoutS + " s: " + why);
        System.exit(2);
    }

    static void list(Admin admin) throws Exception {
        var names = new TreeSet<>(admin.listTopics().names().get());
        for (var d : new TreeMap<>(admin.describeTopics(names).allTopicNames().get()).values())
            System.out.println(d.name() + "\t" + d.partitions().size() + " partitions, "
                               + d.partitions().get(0).replicas().size() + " replicas");
    }
}
