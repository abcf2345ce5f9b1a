// The Kafka Streams baseline of `make bench`: the validate stage written the way a Java shop would
// write it (Processor API, exactly_once_v2, an in-memory dedup store with its changelog topic), with
// the rules of orders/src/validate (required fields and types, id formats, key = orderId, RFC 3339
// createdAt, active ISO 4217 currency, 1-500 items, quantity > 0, prices and amounts >= 0, discount
// within the subtotal, total = subtotal + shipping - discount, contact e-mail and subscription id,
// dedup by orderId with a content fingerprint over a 7-day window). Same outputs: validated order
// and status event keyed by orderId, rejection keyed like the input, dead letter with the original
// bytes. Built and started by bench/src/worker/streams.rs; configured by BENCH_* environment
// variables. It is a measuring stick, not product code: it must not be tuned beyond what the
// worker gets (same commit interval, same compression, default threads and JVM settings).

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

public final class ValidateOrders {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final String STORE = "dedup";
    private static final int MAX_ITEMS = 500;
    private static final Duration DEDUP_WINDOW = Duration.ofDays(7);

    public static void main(String[] args) {
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, env("BENCH_GROUP"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, env("BENCH_BOOTSTRAP"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, env("BENCH_COMMIT_INTERVAL_MS"));
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        props.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "lz4");
        props.put(StreamsConfig.STATE_DIR_CONFIG, env("BENCH_STATE_DIR"));

        Map<String, Integer> currencies = new HashMap<>();
        for (String pair : env("BENCH_CURRENCIES").split(",")) {
            String[] parts = pair.split(":");
            currencies.put(parts[0], Integer.parseInt(parts[1]));
        }

        var bytes = Serdes.ByteArray();
        Topology topology = new Topology();
        topology.addSource("orders", bytes.deserializer(), bytes.deserializer(), env("BENCH_INPUT"));
        topology.addProcessor("validate", () -> new Validate(currencies), "orders");
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.inMemoryKeyValueStore(STORE), Serdes.String(), Serdes.String()),
                "validate");
        for (String output : List.of("validated", "events", "rejected", "dlq")) {
            String topic = env("BENCH_" + output.toUpperCase());
            topology.addSink(output, topic, bytes.serializer(), bytes.serializer(), "validate");
        }
        KafkaStreams streams = new KafkaStreams(topology, props);
        Runtime.getRuntime().addShutdownHook(new Thread(streams::close));
        streams.start();
    }

    private static String env(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            throw new IllegalArgumentException(name + " is not set");
        }
        return value;
    }

    /** One violated rule, as the worker's RejectedOrder lists it. */
    private record Reason(String field, String rule, String message) {}

    private static final class Validate implements Processor<byte[], byte[], byte[], byte[]> {
        private final Map<String, Integer> currencies;
        private ProcessorContext<byte[], byte[]> context;
        private KeyValueStore<String, String> seen;

        Validate(Map<String, Integer> currencies) {
            this.currencies = currencies;
        }

        @Override
        public void init(ProcessorContext<byte[], byte[]> context) {
            this.context = context;
            this.seen = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            JsonNode order;
            try {
                order = record.value() == null ? null : JSON.readTree(record.value());
            } catch (Exception error) {
                order = null;
            }
            if (order == null || !order.isObject()) {
                deadLetter(record);
                return;
            }
            List<Reason> reasons = new ArrayList<>();
            ObjectNode validated = check((ObjectNode) order, record.key(), reasons);
            if (!reasons.isEmpty()) {
                reject(record, order, reasons);
                return;
            }
            String orderId = validated.get("orderId").asText();
            String fingerprint = fingerprint(validated);
            long now = record.timestamp();
            String previous = seen.get(orderId);
            if (previous != null) {
                String[] parts = previous.split(" ");
                boolean live = now - Long.parseLong(parts[1]) < DEDUP_WINDOW.toMillis();
                if (live && parts[0].equals(fingerprint)) {
                    return;
                }
                if (live) {
                    reasons.add(new Reason("orderId", "order_id_reused", "was already validated with different content"));
                    reject(record, order, reasons);
                    return;
                }
            }
            seen.put(orderId, fingerprint + " " + now);
            String at = Instant.ofEpochMilli(now).toString();
            validated.put("validatedAt", at);
            byte[] key = orderId.getBytes(StandardCharsets.UTF_8);
            context.forward(new Record<>(key, encode(validated), now), "validated");
            ObjectNode event = JSON.createObjectNode();
            event.put("orderId", orderId);
            event.put("eventId", "validate:" + orderId);
            event.put("type", "VALIDATED");
            event.put("at", at);
            context.forward(new Record<>(key, encode(event), now), "events");
        }

        /** The checked order (the worker's ValidatedOrder fields but validatedAt), or reasons. */
        private ObjectNode check(ObjectNode order, byte[] key, List<Reason> reasons) {
            ObjectNode out = JSON.createObjectNode();
            String orderId = text(order, "orderId", "order_id_format", ValidateOrders::isToken, reasons);
            if (orderId != null) {
                if (key == null) {
                    reasons.add(new Reason("orderId", "key_matches_order_id", "the Kafka record has no key"));
                } else if (!orderId.equals(new String(key, StandardCharsets.UTF_8))) {
                    reasons.add(new Reason("orderId", "key_matches_order_id", "must equal the Kafka record key"));
                }
                out.put("orderId", orderId);
            }
            String customerId = text(order, "customerId", "customer_id_format", s -> isVisible(s, 128), reasons);
            out.put("customerId", customerId);
            String createdAt = text(order, "createdAt", "timestamp_rfc3339", ValidateOrders::isRfc3339, reasons);
            out.put("createdAt", createdAt);
            String currency = text(order, "currency", "currency_known", currencies::containsKey, reasons);
            out.put("currency", currency);
            if (currency != null && currencies.containsKey(currency)) {
                out.put("currencyExponent", currencies.get(currency));
            }
            Long subtotal = checkItems(order, out, reasons);
            Long shipping = amount(order, "shippingMinor", "shipping_non_negative", reasons);
            Long discount = amount(order, "discountMinor", "discount_non_negative", reasons);
            Long total = integer(order.get("totalMinor"), "totalMinor", reasons);
            if (subtotal != null && shipping != null && discount != null && total != null) {
                if (discount > subtotal) {
                    reasons.add(new Reason("discountMinor", "discount_within_subtotal", "must be at most the subtotal (" + subtotal + ")"));
                } else {
                    try {
                        long expected = Math.subtractExact(Math.addExact(subtotal, shipping), discount);
                        if (expected != total) {
                            reasons.add(new Reason("totalMinor", "total_matches",
                                    "must equal subtotal + shippingMinor - discountMinor = " + expected + ", got " + total));
                        }
                    } catch (ArithmeticException overflow) {
                        reasons.add(new Reason("totalMinor", "amount_overflow", "subtotal + shippingMinor overflows a 64-bit integer"));
                    }
                }
                out.put("subtotalMinor", subtotal);
                out.put("shippingMinor", shipping);
                out.put("discountMinor", discount);
                out.put("totalMinor", total);
            }
            JsonNode contact = order.get("contact");
            if (contact != null && !contact.isNull()) {
                if (!contact.isObject()) {
                    reasons.add(new Reason("contact", "wrong_type", "must be an object"));
                } else {
                    optionalText(contact, "contact.email", "email", "email_format", ValidateOrders::isEmail, reasons);
                    optionalText(contact, "contact.webhookSubscriptionId", "webhookSubscriptionId",
                            "webhook_subscription_id_format", ValidateOrders::isToken, reasons);
                    out.set("contact", contact);
                }
            }
            return out;
        }

        private Long checkItems(ObjectNode order, ObjectNode out, List<Reason> reasons) {
            JsonNode items = order.get("items");
            if (items == null || items.isNull()) {
                reasons.add(new Reason("items", "required", "is required"));
                return null;
            }
            if (!items.isArray()) {
                reasons.add(new Reason("items", "wrong_type", "must be an array"));
                return null;
            }
            if (items.isEmpty()) {
                reasons.add(new Reason("items", "items_non_empty", "must not be empty"));
                return null;
            }
            if (items.size() > MAX_ITEMS) {
                reasons.add(new Reason("items", "items_max", "must have at most " + MAX_ITEMS + " items"));
                return null;
            }
            ArrayNode checked = out.putArray("items");
            Long subtotal = 0L;
            for (int index = 0; index < items.size(); index++) {
                JsonNode item = items.get(index);
                String path = "items[" + index + "]";
                if (!item.isObject()) {
                    reasons.add(new Reason(path, "wrong_type", "must be an object"));
                    subtotal = null;
                    continue;
                }
                String sku = text(item, path + ".sku", "sku", "sku_format", s -> isVisible(s, 64), reasons);
                Long quantity = integer(item.get("quantity"), path + ".quantity", reasons);
                if (quantity != null && quantity <= 0) {
                    reasons.add(new Reason(path + ".quantity", "quantity_positive", "must be greater than 0"));
                    quantity = null;
                }
                Long price = integer(item.get("unitPriceMinor"), path + ".unitPriceMinor", reasons);
                if (price != null && price < 0) {
                    reasons.add(new Reason(path + ".unitPriceMinor", "unit_price_non_negative", "must be 0 or more"));
                    price = null;
                }
                if (sku == null || quantity == null || price == null) {
                    subtotal = null;
                    continue;
                }
                ObjectNode line = checked.addObject();
                line.put("sku", sku);
                line.put("quantity", quantity);
                line.put("unitPriceMinor", price);
                try {
                    long amount = Math.multiplyExact(quantity, price);
                    subtotal = subtotal == null ? null : Math.addExact(subtotal, amount);
                } catch (ArithmeticException overflow) {
                    reasons.add(new Reason(path, "amount_overflow", "quantity x unitPriceMinor overflows a 64-bit integer"));
                    subtotal = null;
                }
            }
            return subtotal;
        }

        private void reject(Record<byte[], byte[]> record, JsonNode order, List<Reason> reasons) {
            ObjectNode rejected = JSON.createObjectNode();
            JsonNode orderId = order.get("orderId");
            if (orderId != null && orderId.isTextual() && isToken(orderId.asText())) {
                rejected.put("orderId", orderId.asText());
            }
            ArrayNode list = rejected.putArray("reasons");
            for (Reason reason : reasons) {
                list.addObject().put("field", reason.field()).put("rule", reason.rule()).put("message", reason.message());
            }
            rejected.set("order", order);
            rejected.put("rejectedAt", Instant.ofEpochMilli(record.timestamp()).toString());
            context.forward(new Record<>(record.key(), encode(rejected), record.timestamp()), "rejected");
        }

        private void deadLetter(Record<byte[], byte[]> record) {
            Record<byte[], byte[]> letter = new Record<>(record.key(), record.value(), record.timestamp());
            letter.headers().add("orderpipe.error.stage", "validate".getBytes(StandardCharsets.UTF_8));
            letter.headers().add("orderpipe.error.reason", "not_an_object".getBytes(StandardCharsets.UTF_8));
            context.forward(letter, "dlq");
        }
    }

    interface Format {
        boolean isValid(String text);
    }

    private static String text(JsonNode object, String field, String rule, Format format, List<Reason> reasons) {
        return text(object, field, field, rule, format, reasons);
    }

    /** A required string member that must pass `format`; null (with a reason) otherwise. */
    private static String text(JsonNode object, String path, String field, String rule, Format format, List<Reason> reasons) {
        JsonNode value = object.get(field);
        if (value == null || value.isNull()) {
            reasons.add(new Reason(path, "required", "is required"));
            return null;
        }
        return checkedText(value, path, rule, format, reasons);
    }

    private static void optionalText(JsonNode object, String path, String field, String rule, Format format, List<Reason> reasons) {
        JsonNode value = object.get(field);
        if (value != null && !value.isNull()) {
            checkedText(value, path, rule, format, reasons);
        }
    }

    private static String checkedText(JsonNode value, String path, String rule, Format format, List<Reason> reasons) {
        if (!value.isTextual()) {
            reasons.add(new Reason(path, "wrong_type", "must be a string"));
            return null;
        }
        if (!format.isValid(value.asText())) {
            reasons.add(new Reason(path, rule, "has the wrong format"));
            return null;
        }
        return value.asText();
    }

    private static Long amount(JsonNode object, String field, String rule, List<Reason> reasons) {
        JsonNode value = object.get(field);
        if (value == null || value.isNull()) {
            return 0L;
        }
        Long amount = integer(value, field, reasons);
        if (amount != null && amount < 0) {
            reasons.add(new Reason(field, rule, "must be 0 or more"));
            return null;
        }
        return amount;
    }

    private static Long integer(JsonNode value, String path, List<Reason> reasons) {
        if (value == null || value.isNull()) {
            reasons.add(new Reason(path, "required", "is required"));
            return null;
        }
        if (!value.isIntegralNumber()) {
            reasons.add(new Reason(path, "wrong_type", "must be an integer"));
            return null;
        }
        if (!value.canConvertToLong()) {
            reasons.add(new Reason(path, "integer_range", "must fit a signed 64-bit integer"));
            return null;
        }
        return value.asLong();
    }

    private static boolean isToken(String text) {
        if (text.isEmpty() || text.length() > 64) {
            return false;
        }
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (!(Character.isLetterOrDigit(c) && c < 128) && c != '_' && c != '-') {
                return false;
            }
        }
        return true;
    }

    private static boolean isVisible(String text, int max) {
        if (text.isEmpty() || text.length() > max) {
            return false;
        }
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c <= ' ' || c >= 127) {
                return false;
            }
        }
        return true;
    }

    private static boolean isEmail(String text) {
        int at = text.indexOf('@');
        if (at <= 0 || text.length() > 254 || text.indexOf('@', at + 1) >= 0) {
            return false;
        }
        for (int i = 0; i < text.length(); i++) {
            if (Character.isWhitespace(text.charAt(i)) || Character.isISOControl(text.charAt(i))) {
                return false;
            }
        }
        String[] labels = text.substring(at + 1).split("\\.", -1);
        if (labels.length < 2) {
            return false;
        }
        for (String label : labels) {
            if (label.isEmpty()) {
                return false;
            }
        }
        return true;
    }

    private static boolean isRfc3339(String text) {
        try {
            OffsetDateTime.parse(text, DateTimeFormatter.ISO_OFFSET_DATE_TIME);
            return true;
        } catch (Exception error) {
            return false;
        }
    }

    /** 16 hex digits of FNV-1a 64 over the canonical JSON of the checked order, as the worker's. */
    private static String fingerprint(ObjectNode order) {
        long hash = 0xcbf29ce484222325L;
        for (byte b : encode(order)) {
            hash ^= (b & 0xff);
            hash *= 0x100000001b3L;
        }
        return String.format("%016x", hash);
    }

    private static byte[] encode(JsonNode node) {
        try {
            return JSON.writeValueAsBytes(node);
        } catch (Exception error) {
            throw new IllegalStateException("encoding JSON", error);
        }
    }
}
