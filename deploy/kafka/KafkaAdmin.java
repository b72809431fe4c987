// Admin helper for deploy/local/kafka.sh, run with the java source launcher (no build step).
// One JVM waits for the broker and creates every topic: the CLI tools would start a JVM per topic.
//   java -cp 'LIBS/*' KafkaAdmin.java ensure BOOTSTRAP TIMEOUT_S PARTITIONS TOPIC...
//   java -cp 'LIBS/*' KafkaAdmin.java list BOOTSTRAP
// -Dtrialroute.admin.config=FILE adds client properties (security.protocol, SASL, truststore).
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
            if (a[0].equals("ensure")) ensure(admin, Integer.parseInt(a[2]), Integer.parseInt(a[3]),
                                              Arrays.asList(a).subList(4, a.length));
            else list(admin);
        }
    }

    static void ensure(Admin admin, int timeoutS, int partitions, List<String> topics) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutS * 1000L;
        while (true) {  // the broker answers metadata requests only once it has fully started
            try {
                admin.describeCluster(new DescribeClusterOptions().timeoutMs(2000)).nodes().get();
                break;
            } catch (ExecutionException e) {
                if (System.currentTimeMillis() > deadline) {
                    System.err.println("broker did not answer within " + timeoutS + " s: " + e.getCause());
                    System.exit(2);
                }
                Thread.sleep(250);
            }
        }
        Set<String> existing = admin.listTopics().names().get();
        List<NewTopic> missing = new ArrayList<>();
        for (String t : topics) if (!existing.contains(t)) missing.add(new NewTopic(t, partitions, (short) 1));
        for (var e : admin.createTopics(missing).values().entrySet()) {
            try {
                e.getValue().get();
            } catch (ExecutionException ex) {
                if (!(ex.getCause() instanceof TopicExistsException)) throw ex;  // created concurrently
            }
        }
        System.out.println("topics: " + missing.size() + " created, " + (topics.size() - missing.size()) + " already there");
    }

    static void list(Admin admin) throws Exception {
        var names = new TreeSet<>(admin.listTopics().names().get());
        for (var d : new TreeMap<>(admin.describeTopics(names).allTopicNames().get()).values())
            System.out.println(d.name() + "\t" + d.partitions().size() + " partitions");
    }
}
